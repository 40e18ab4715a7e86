//! The transport seam on turmoil's simulated network: the `TurmoilTcp` connector carries bytes
//! both ways, and a simulated partition is visible to it as a connection failure. This is what
//! lets backend code written against `Connector` run unchanged inside the simulation.
#![cfg(feature = "sim")]

use hubbus::transport::{Connector, TurmoilTcp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PORT: u16 = 6379;

fn echo_server(sim: &mut turmoil::Sim<'_>) {
    sim.host("broker", || async {
        let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
        loop {
            let (mut socket, _) = listener.accept().await?;
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

#[test]
fn turmoil_connector_carries_bytes_both_ways() {
    let mut sim = turmoil::Builder::new().build();
    echo_server(&mut sim);
    sim.client("node", async {
        let mut stream = TurmoilTcp.connect(&format!("broker:{PORT}")).await?;
        stream.write_all(b"PING").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"PING");
        stream.write_all(b"second").await?;
        let mut reply = [0u8; 6];
        stream.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"second");
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_partition_is_a_connection_failure_and_repair_heals_it() {
    let mut sim = turmoil::Builder::new().build();
    echo_server(&mut sim);
    sim.client("node", async {
        turmoil::partition("node", "broker");
        let refused = TurmoilTcp.connect(&format!("broker:{PORT}")).await;
        assert!(refused.is_err(), "connect must fail across a partition");
        turmoil::repair("node", "broker");
        let mut stream = TurmoilTcp.connect(&format!("broker:{PORT}")).await?;
        stream.write_all(b"back").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"back");
        Ok(())
    });
    sim.run().unwrap();
}
