//! Security of the multi-host mode: a node signs in to an etcd with auth enabled (its password
//! from the environment) and says what is missing when it cannot; TLS between nodes and to
//! clients across a failover; the cluster secret keeps a stranger out when no pid can be checked.
//! Nodes on 127.0.0.151–159 in the host's namespace (no traffic is cut here).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use auction::cluster::{Proc, Spec, Transcript, free_port, leader_of};
use auction::etcd::access::{Credentials, EtcdAccess, PASSWORD_ENV};
use auction::etcd::api::auth_client::AuthClient;
use auction::etcd::api::{AuthEnableRequest, AuthUserAddRequest, AuthUserGrantRoleRequest};
use auction::etcd::registry::{Registry, RegistryError};
use auction::types::NodeId;
use auction_lab::etcd::{Etcd, EtcdSpec};
use auction_lab::harness::{Harness, NODE, WAIT, json, run_client, wait_for_lines};

const PASSWORD: &str = "correct horse battery staple";

/// Turns etcd's auth on, with user `root` (password [`PASSWORD`]) holding the root role.
async fn enable_auth(etcd: &Etcd) {
    let mut auth = AuthClient::connect(etcd.client_url(0)).await.unwrap();
    auth.user_add(AuthUserAddRequest {
        name: "root".into(),
        password: PASSWORD.into(),
    })
    .await
    .unwrap();
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: "root".into(),
        role: "root".into(),
    })
    .await
    .unwrap();
    auth.auth_enable(AuthEnableRequest {}).await.unwrap();
}

/// A spec for nodes 1, 2 and 3 on 127.0.0.`base`+1.., in cluster `name` of `etcd`, with more
/// node arguments.
fn spec(etcd: &Etcd, name: &str, base: u8, args: &[&str]) -> Spec {
    Harness::multi_host_spec(&etcd.client_urls(), name, base, args)
}

/// Starts node `id` of `spec` by hand (not through the harness, which expects it to join) with
/// more `env`, and returns its process.
fn spawn_node(spec: &Spec, id: u16, env: &[(&str, &str)], transcript: &Transcript) -> Proc {
    let host = spec.hosts[&id].to_string();
    let mut cmd = tokio::process::Command::new(&*NODE);
    cmd.args(["--id", &id.to_string(), "--host", &host])
        .args(["--client-port", &spec.client_port.to_string()])
        .args(["--leader-port", &spec.leader_port.to_string()])
        .args(&spec.node_args)
        .env("AUCTION_AUTH_DIR", &spec.auth_dir)
        .env_remove(PASSWORD_ENV)
        .envs(env.iter().copied());
    Proc::spawn(cmd, &format!("node{id}"), transcript).unwrap()
}

/// Node 3 of `spec`, started with more `env`, exits with an error that contains `says`.
async fn fails_saying(spec: &Spec, env: &[(&str, &str)], transcript: &Transcript, says: &str) {
    let mut node = spawn_node(spec, 3, env, transcript);
    let exit = node.wait(WAIT).await.expect("the node gives up");
    assert!(!exit.success(), "{says}");
    wait_for_lines(transcript, 1, |l| {
        l.starts_with("[node3] error:") && l.contains(says)
    })
    .await;
}

#[tokio::test]
async fn nodes_sign_in_to_an_etcd_with_auth_and_a_node_without_credentials_says_what_is_missing() {
    let etcd = Etcd::for_test().await;
    enable_auth(&etcd).await;
    let mut spec = spec(&etcd, "signed-in", 150, &["--etcd-user", "root"]);
    spec.node_env = vec![(PASSWORD_ENV.into(), PASSWORD.into())];
    let h = Harness::start_with_spec(spec.clone(), &[1, 2]).await;
    let status = h.wait_for(|s| s.members.len() == 2).await;
    assert_eq!(leader_of(&status), 1);

    let transcript = &h.cluster.transcript;
    // Each node that cannot sign in exits with an error that says why, and joins nothing.
    // (signs in as root, its password, what the error says)
    let cases = [
        (false, Some(PASSWORD), "give --etcd-user"),
        (true, None, PASSWORD_ENV),
        (true, Some("wrong"), "authentication failed"),
    ];
    for (user, password, says) in cases {
        let env: Vec<(&str, &str)> = password.map(|p| (PASSWORD_ENV, p)).into_iter().collect();
        let mut s = spec.clone();
        if !user {
            s.node_args.retain(|a| a != "--etcd-user" && a != "root");
        }
        fails_saying(&s, &env, transcript, says).await;
    }
    let status = h.wait_for(|s| s.members.len() == 2).await;
    assert_eq!(leader_of(&status), 1);
    h.assert_no_panics();
}

/// etcd forgets a token unused for `--auth-token-ttl`; the registry signs in again rather than
/// fail.
#[tokio::test]
async fn a_registry_signs_in_again_when_etcd_forgot_its_token() {
    let mut spec = EtcdSpec::on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    spec.client_port = free_port().unwrap();
    spec.peer_port = free_port().unwrap();
    spec.as_hosts = false;
    spec.extra_args = vec!["--auth-token-ttl=1".into()];
    let etcd = Etcd::start(spec, &Transcript::new(false)).await.unwrap();
    enable_auth(&etcd).await;
    let mut access = EtcdAccess::plain(&etcd.client_urls());
    access.credentials = Some(Credentials {
        user: "root".into(),
        password: PASSWORD.into(),
    });
    let registry = Registry::connect(&access, "tokens", None).unwrap();
    assert!(registry.found(NodeId(1)).await.unwrap().is_some());
    // The token expires on etcd's clock, unseen: nothing to poll but time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lead = registry.leadership().await.unwrap().expect("a leader");
    assert_eq!(lead.leader, NodeId(1));
    // Without a user, etcd refuses, and the error names what to give.
    let anonymous = Registry::new(&etcd.client_urls(), "tokens", None).unwrap();
    match anonymous.leadership().await {
        Err(RegistryError::Denied(why)) => assert!(why.contains("--etcd-user"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tls_between_nodes_and_to_clients_across_a_failover() {
    let etcd = Etcd::for_test().await;
    let mut spec = spec(&etcd, "tls", 153, &[]);
    spec.tls = true;
    let mut h = Harness::start_with_spec(spec, &[1, 2, 3]).await;
    h.wait_for(|s| s.members.len() == 3).await;
    let servers = h
        .cluster
        .spec
        .client_addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let auth_dir = h.cluster.spec.auth_dir.clone();
    let bid = |amount: &'static str| {
        let (servers, auth_dir) = (servers.clone(), auth_dir.clone());
        async move {
            run_client(
                &servers,
                &auth_dir,
                &["--tls", "--json", "--id", "ann", "bid", amount],
            )
            .await
        }
    };
    let (code, stdout, stderr) = bid("10").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    // Plain HTTP/2 gets nowhere.
    let (code, stdout, _) = run_client(
        &servers,
        &auth_dir,
        &["--retry-ms", "300", "--json", "result"],
    )
    .await;
    assert_eq!(
        (code, json(&stdout)["outcome"].as_str()),
        (2, Some("exception"))
    );
    // The members dialed the leader over TLS: one takes over and serves TLS.
    h.cluster.kill(1).await;
    h.wait_for(|s| leader_of(s) != 1 && s.members.len() == 2)
        .await;
    let (code, stdout, stderr) = bid("11").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(json(&stdout)["highest_bid"].as_u64(), Some(11));
    h.assert_no_panics();
}

/// Across hosts no pid can be checked: the cluster secret alone keeps a stranger out.
#[tokio::test]
async fn a_node_without_the_cluster_secret_cannot_join_across_hosts() {
    let etcd = Etcd::for_test().await;
    let spec = spec(&etcd, "stranger", 156, &[]);
    let h = Harness::start_with_spec(spec.clone(), &[1]).await;
    let mut stranger = spawn_node(
        &spec,
        2,
        &[(
            "AUCTION_CLUSTER_SECRET",
            "not-the-cluster-secret-not-the-cluster-secret",
        )],
        &h.cluster.transcript,
    );
    let exit = stranger.wait(WAIT).await.expect("the stranger gives up");
    assert!(!exit.success());
    wait_for_lines(&h.cluster.transcript, 1, |l| {
        l.starts_with("[node2] error:") && l.contains("does not share this node's cluster secret")
    })
    .await;
    let status = h.wait_for(|s| s.members.len() == 1).await;
    assert_eq!(leader_of(&status), 1);
    h.assert_no_panics();
}

/// PEM files of a CA, a server certificate for 127.0.0.1 and a client certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            ("server", vec!["127.0.0.1".to_string()]),
            ("client", vec![]),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{name}-key.pem")),
                key.serialize_pem(),
            )
            .unwrap();
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

#[tokio::test]
async fn nodes_reach_etcd_over_tls_with_a_client_certificate_and_not_without() {
    let pki = Pki::new();
    let mut spec = EtcdSpec::on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]);
    spec.client_port = free_port().unwrap();
    spec.peer_port = free_port().unwrap();
    spec.as_hosts = false;
    // Plain HTTP on the lab's port for its health checks, TLS with client certificates on
    // another: the nodes use only that one.
    let (plain, tls) = (
        format!("http://127.0.0.1:{}", spec.client_port),
        format!("https://127.0.0.1:{}", free_port().unwrap()),
    );
    let both = format!("{plain},{tls}");
    spec.extra_args = vec![
        format!("--listen-client-urls={both}"),
        format!("--advertise-client-urls={both}"),
        format!("--cert-file={}", pki.path("server.pem")),
        format!("--key-file={}", pki.path("server-key.pem")),
        format!("--trusted-ca-file={}", pki.path("ca.pem")),
        "--client-cert-auth".into(),
    ];
    let _etcd = Etcd::start(spec, &Transcript::new(false)).await.unwrap();

    let tls_args = [
        "--etcd-ca".to_string(),
        pki.path("ca.pem"),
        "--etcd-cert".into(),
        pki.path("client.pem"),
        "--etcd-key".into(),
        pki.path("client-key.pem"),
    ];
    let node_args: Vec<&str> = tls_args.iter().map(String::as_str).collect();
    let spec = Harness::multi_host_spec(std::slice::from_ref(&tls), "etcd-tls", 160, &node_args);
    let h = Harness::start_with_spec(spec.clone(), &[1, 2]).await;
    let status = h.wait_for(|s| s.members.len() == 2).await;
    assert_eq!(leader_of(&status), 1);

    // Without the client certificate etcd refuses the connection; https without a CA, or a CA
    // with http, is refused before anything is tried.
    let transcript = &h.cluster.transcript;
    let ca_only = ["--etcd-ca".to_string(), pki.path("ca.pem")];
    let cases: [(&str, &[String], &str); 3] = [
        (&tls, &ca_only, "etcd"),
        (&tls, &[], "--etcd-ca"),
        (&plain, &tls_args, "use https://"),
    ];
    for (url, args, says) in cases {
        let mut s = spec.clone();
        s.node_args = ["--etcd", url, "--cluster", "etcd-tls"]
            .map(String::from)
            .into_iter()
            .chain(args.iter().cloned())
            .collect();
        fails_saying(&s, &[], transcript, says).await;
    }
    let status = h.wait_for(|s| s.members.len() == 2).await;
    assert_eq!(leader_of(&status), 1);
    h.assert_no_panics();
}
