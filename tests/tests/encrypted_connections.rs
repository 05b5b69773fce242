//! The fleet on a Redis and a Postgres that speak TLS only, as managed services do: it
//! verifies their certificates against the operator's authority and shows its own client
//! certificate to Redis; a certificate refused stops a process at start with the reason,
//! rather than leave it waiting for ever.

use std::time::Duration;

use taskfleet_storage::redis::RedisTlsArgs;
use taskfleet_tests::{
    FAST_FAILOVER, TestEnv, admin_database_url,
    redis_cluster::RedisCluster,
    tls_servers::{Certificates, TlsPostgres, TlsRedis},
    wait_until,
};

/// The test's authority, a Redis and a Postgres speaking TLS only with its certificates, and
/// a test environment on them that verifies both and shows Redis a client certificate.
async fn on_tls_servers() -> (Certificates, (TlsRedis, TlsPostgres), TestEnv) {
    let certificates = Certificates::make();
    let redis = TlsRedis::start(&certificates).await;
    let postgres = TlsPostgres::start(&certificates).await;
    let verified = format!(
        "sslmode=verify-full&sslrootcert={}",
        certificates.path("ca.pem")
    );
    let admin = postgres.url("postgres", &verified);
    let env = TestEnv::on_servers(&admin, &redis.url(), client_certificate(&certificates)).await;
    (certificates, (redis, postgres), env)
}

fn client_certificate(certificates: &Certificates) -> RedisTlsArgs {
    RedisTlsArgs {
        ca_file: Some(certificates.file("ca.pem")),
        cert_file: Some(certificates.file("client.pem")),
        key_file: Some(certificates.file("client.key")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_on_redis_and_postgres_over_verified_tls() {
    let (_certificates, _servers, mut env) = on_tls_servers().await;
    let api = env.start_api(&[]).await;
    let key = env.create_key("acme");
    env.start_worker(FAST_FAILOVER);

    api.submit_sleeps(&key, 200, 20).await;
    wait_until(Duration::from_secs(60), "every job succeeded", || async {
        env.count_state("succeeded").await == 200
    })
    .await;
    assert!(env.successes_per_job().await.iter().all(|&n| n == 1));
    // Readiness runs a job through the API, Redis and a worker and reads the migrations.
    let ready = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());

    // pg_hba.conf lets in TLS connections only; each of the fleet's says so itself.
    let (fleet, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE ssl.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl ssl USING (pid)
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        fleet >= 3,
        "the API and the worker hold connections: {fleet}"
    );
    assert_eq!(encrypted, fleet);
    // Redis listens on its TLS port only, and every client showed a certificate.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut env.redis.clone())
        .await
        .unwrap();
    assert!(clients.lines().count() >= 4, "{clients}");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_on_a_redis_cluster_over_tls() {
    let certificates = Certificates::make();
    let cluster = RedisCluster::start_tls(3, &certificates).await;
    let mut env = TestEnv::on_servers(
        &admin_database_url(),
        &cluster.url(),
        client_certificate(&certificates),
    )
    .await;
    let small_pool = [("TASKFLEET_PG_MAX_CONNECTIONS", "8")];
    let api = env.start_api(&small_pool).await;
    let key = env.create_key("acme");
    env.start_worker_env(FAST_FAILOVER, &small_pool);

    api.submit_sleeps(&key, 300, 20).await;
    wait_until(Duration::from_secs(120), "every job succeeded", || async {
        env.count_state("succeeded").await == 300
    })
    .await;
    assert!(env.successes_per_job().await.iter().all(|&n| n == 1));
    // The cluster client found every primary over TLS: leases (scripts) landed on each.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for port in primaries {
        assert!(
            cluster.calls(port, "evalsha") > 0,
            "no lease on primary {port}"
        );
    }

    // The cluster client gives its nodes' errors back as text; the worker still stops, and
    // says why, when the nodes' certificates are not of the authority it was given.
    env.capture_logs();
    env.route_redis_tls(RedisTlsArgs {
        ca_file: Some(certificates.file("stranger-ca.pem")),
        ..client_certificate(&certificates)
    });
    let refused = env.start_worker_env(FAST_FAILOVER, &small_pool);
    wait_until(Duration::from_secs(30), "the worker stops", || {
        let running = env.is_running(refused);
        async move { !running }
    })
    .await;
    let logged = env.logs();
    assert!(logged.contains("UnknownIssuer"), "{logged}");
    env.finish().await;
}

/// A worker started with these settings is refused; its log says `said`.
struct Refusal<'a> {
    what: &'a str,
    redis_tls: RedisTlsArgs,
    database_url: &'a str,
    said: &'a [&'a str],
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_refused_stops_the_process_and_says_why() {
    let (certificates, _servers, mut env) = on_tls_servers().await;
    let database = env.child_database_url().to_owned();
    let plain = database.split_once('?').unwrap().0.to_owned();
    let wrong_root = database.replace(
        &certificates.path("ca.pem"),
        &certificates.path("stranger-ca.pem"),
    );

    let trusted = client_certificate(&certificates);
    let missing_root = database.replace(&certificates.path("ca.pem"), "/nonexistent/ca.pem");
    let refusals: [Refusal; 6] = [
        Refusal {
            what: "Redis's certificate checked against another authority",
            redis_tls: RedisTlsArgs {
                ca_file: Some(certificates.file("stranger-ca.pem")),
                ..trusted.clone()
            },
            database_url: &database,
            said: &["cannot connect to Redis", "UnknownIssuer"],
        },
        Refusal {
            what: "no client certificate shown to a Redis that asks for one",
            redis_tls: RedisTlsArgs {
                ca_file: trusted.ca_file.clone(),
                ..RedisTlsArgs::default()
            },
            database_url: &database,
            said: &["cannot connect to Redis", "CertificateRequired"],
        },
        Refusal {
            what: "a client certificate with another certificate's key",
            redis_tls: RedisTlsArgs {
                key_file: Some(certificates.file("stranger-ca.key")),
                ..trusted.clone()
            },
            database_url: &database,
            said: &["cannot connect to Redis", "TLS parameters"],
        },
        Refusal {
            what: "an authority file for Postgres that is not there",
            redis_tls: trusted.clone(),
            database_url: &missing_root,
            said: &["DATABASE_URL is not valid", "/nonexistent/ca.pem"],
        },
        Refusal {
            what: "Postgres's certificate checked against another authority",
            redis_tls: trusted.clone(),
            database_url: &wrong_root,
            said: &["could not be migrated at start", "UnknownIssuer"],
        },
        // On loopback a URL without sslmode does not use TLS, and this Postgres
        // refuses connections without it.
        Refusal {
            what: "no TLS to a Postgres that requires it",
            redis_tls: trusted.clone(),
            database_url: &plain,
            said: &["could not be migrated at start", "no encryption"],
        },
    ];
    for Refusal {
        what,
        redis_tls,
        database_url,
        said,
    } in refusals
    {
        // Each refusal's logs apart.
        env.capture_logs();
        env.route_redis_tls(redis_tls);
        let worker = env.start_worker_env(FAST_FAILOVER, &[("DATABASE_URL", database_url)]);
        wait_until(
            Duration::from_secs(30),
            &format!("{what}: the worker stops"),
            || {
                let running = env.is_running(worker);
                async move { !running }
            },
        )
        .await;
        let logged = env.logs();
        for words in said {
            assert!(logged.contains(words), "{what}: {words:?} not in {logged}");
        }
    }

    // The API stops on the same refusals.
    env.capture_logs();
    let api = env.spawn_api(&[("DATABASE_URL", &wrong_root)]).0;
    wait_until(Duration::from_secs(30), "the API stops", || {
        let running = env.is_running(api);
        async move { !running }
    })
    .await;
    assert!(env.logs().contains("UnknownIssuer"), "{}", env.logs());
    // Files given for a plain URL are refused, not ignored.
    let output = env.api_command_env(&["serve"], &[("REDIS_URL", "redis://127.0.0.1:6379")]);
    assert!(!output.status.success());
    assert!(
        env.logs().contains("must start with rediss://"),
        "{}",
        env.logs()
    );
    env.finish().await;
}
