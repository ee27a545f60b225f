//! Protocol versions N and N-1 interoperate; a peer outside the window is refused with a typed
//! error, never half-understood.

use std::net::SocketAddr;
use std::time::Duration;

use drill_scenarios::node::{client_ip, SERVER_IP};
use drill_sim::disk::{DiskConfig, DiskFaults, DiskSim};
use drill_sim::rng::SeedTree;
use drill_sim::world::{NetConfig, Runtime};
use drill_stack::proto::{Request, Response, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN, SERVER_PORT};
use drill_stack::rpc::{serve, RpcClient};
use drill_stack::server::Server;
use drill_stack::SyncError;

fn pull_with_version(v: u32) -> Result<Response, SyncError> {
    let seeds = SeedTree::new(1);
    let rt = Runtime::new(seeds, NetConfig::default(), DiskConfig::default(), Duration::from_secs(60));
    rt.block_on(async move {
        let h = madsim::runtime::Handle::current();
        let server = h
            .create_node()
            .name("server")
            .ip(SERVER_IP)
            .init(|| async {
                let mut s = Server::open("server.db").expect("server store");
                let ep = madsim::net::Endpoint::bind(SocketAddr::new(SERVER_IP, SERVER_PORT)).await.unwrap();
                let _ = serve(&ep, move |token, req| s.handle_with_token(token.as_deref(), req)).await;
            })
            .build();
        DiskSim::current().add_node(server.id(), "server", DiskFaults::none(), &seeds);
        let device = h.create_node().name("client-1").ip(client_ip(0)).build();
        DiskSim::current().add_node(device.id(), "client-1", DiskFaults::none(), &seeds);
        madsim::time::sleep(Duration::from_millis(10)).await;
        device
            .spawn(async move {
                let addr = SocketAddr::new(SERVER_IP, SERVER_PORT);
                let mut rpc = RpcClient::bind(addr, 1, Duration::from_millis(500)).await?.with_version(v);
                rpc.call(&Request::Pull { tenant: "acme".into(), replica: "client-1".into(), since: 0, limit: 8, head: None }).await
            })
            .await
            .expect("the device task runs")
    })
}

#[test]
fn versions_inside_the_window_are_served() {
    for v in PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION {
        let r = pull_with_version(v).unwrap_or_else(|e| panic!("version {v}: {e}"));
        assert!(matches!(r, Response::Page { .. }), "version {v}: {r:?}");
    }
}

#[test]
fn versions_outside_the_window_get_a_typed_refusal() {
    for v in [PROTOCOL_VERSION_MIN - 1, PROTOCOL_VERSION + 1] {
        match pull_with_version(v) {
            Err(SyncError::Protocol { detail }) => assert!(detail.contains(&v.to_string()), "{detail}"),
            other => panic!("version {v} was not refused: {other:?}"),
        }
    }
}
