//! Runs the fake GitHub, Atlassian and Google servers until killed: for `make up`'s offline
//! demo (`--demo` seeds a week of plausible work) and for trying a client by hand.

use std::net::SocketAddr;

use clap::Parser;
use taskfleet_tests::fake_providers::FakeProviders;

#[derive(Parser)]
#[command(about = "Fake GitHub, Jira, Confluence, Gmail and Google Drive servers")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:9180")]
    addr: SocketAddr,
    /// Seed the demo data set (issues, pull requests, tasks, mail, files).
    #[arg(long)]
    demo: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let fakes = FakeProviders::start_on(args.addr).await;
    if args.demo {
        fakes.seed_demo();
    }
    eprintln!("fake providers listening on {}", fakes.url());
    std::future::pending::<()>().await;
}
