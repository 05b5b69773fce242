//! An S3-compatible object store for one test: moto's server (`make s3-tools` installs it
//! under var/s3/), in memory, on a free port. It honours conditional writes
//! (`If-None-Match: *`), which lance commits to S3 with, so several workers can write to one
//! table as they would on AWS.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use crate::{TestEnv, free_port, repository, spawn_server, wait_until};

pub struct S3Server {
    pub endpoint: String,
    process: Child,
}

impl S3Server {
    /// Starts the server and waits until it answers.
    pub async fn start() -> S3Server {
        let port = free_port();
        let mut cmd = Command::new(program());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = spawn_server(&mut cmd, "moto_server (make s3-tools installs it)");
        let server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            process,
        };
        wait_until(Duration::from_secs(30), "the S3 server answers", || async {
            reqwest::get(&server.endpoint).await.is_ok()
        })
        .await;
        server
    }

    /// Makes a bucket (moto takes an unsigned `PUT /bucket`).
    pub async fn create_bucket(&self, bucket: &str) {
        let made = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            made.status().is_success(),
            "bucket {bucket}: {}",
            made.status()
        );
    }

    /// Starts a worker of `env` with `args` that keeps its vector store at `uri`
    /// (`s3://bucket/path`) here, through the AWS variables lance reads, as for any
    /// S3-compatible store; returns its index among `env`'s children.
    pub fn start_worker(&self, env: &mut TestEnv, args: &[&str], uri: &str) -> usize {
        env.start_worker_env(
            args,
            &[
                ("TASKFLEET_VECTOR_URI", uri),
                ("AWS_ENDPOINT", &self.endpoint),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_ALLOW_HTTP", "true"),
            ],
        )
    }

    /// Stops the server, as an object store that stops answering.
    pub fn stop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn program() -> PathBuf {
    repository("var/s3/bin/moto_server")
}
