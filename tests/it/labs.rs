//! The reference lab, exactly: lab 1's round-robin order and lab 2's URI split.

use crate::support::{Proxy, Servers, get, h2_client, send, server_name};

async fn lab(servers: &Servers) -> Vec<std::net::SocketAddr> {
    let mut addrs = Vec::new();
    for name in ["node1", "node2", "node3", "node4"] {
        addrs.push(servers.echo(name).await);
    }
    addrs
}

#[tokio::test]
async fn lab1_round_robin_goes_node1_node2_node3_node1() {
    let servers = Servers::new();
    let n = lab(&servers).await;
    let proxy = Proxy::start(&format!(
        r#"
        [frontend.myfrontend]
        bind = "127.0.0.1:0"
        default_backend = "webservers"

        [backend.webservers]
        balance = "roundrobin"
        servers = [
          {{ name = "s1", addr = "{}", check = true }},
          {{ name = "s2", addr = "{}", check = true }},
          {{ name = "s3", addr = "{}", check = true }},
        ]
        "#,
        n[0], n[1], n[2]
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..7 {
        let (status, _, body) = get(&proxy.url("/")).await;
        assert_eq!(status, 200);
        seen.push(server_name(&body).to_owned());
    }
    assert_eq!(
        seen,
        [
            "node1", "node2", "node3", "node1", "node2", "node3", "node1"
        ]
    );
}

fn lab2(n: &[std::net::SocketAddr]) -> String {
    format!(
        r#"
        [defaults]
        timeout = {{ client = "10s", connect = "5s", server = "10s", http_request = "10s" }}

        [frontend.myfrontend]
        bind = "127.0.0.1:0"
        default_backend = "webservers"
        acl = {{ is_item = "path_beg /item", is_basket = "path_beg /basket" }}
        use_backend = [
          {{ backend = "items", if = "is_item" }},
          {{ backend = "baskets", if = "is_basket" }},
        ]

        [backend.items]
        servers = [ {{ name = "s1", addr = "{0}" }}, {{ name = "s2", addr = "{1}" }} ]

        [backend.baskets]
        servers = [ {{ name = "s3", addr = "{2}" }}, {{ name = "s4", addr = "{3}" }} ]

        [backend.webservers]
        servers = [ {{ name = "s1", addr = "{0}" }}, {{ name = "s2", addr = "{1}" }}, {{ name = "s3", addr = "{2}" }} ]
        "#,
        n[0], n[1], n[2], n[3]
    )
}

#[tokio::test]
async fn lab2_uri_routing_splits_items_baskets_and_default() {
    let servers = Servers::new();
    let n = lab(&servers).await;
    let proxy = Proxy::start(&lab2(&n)).await;
    let mut items = Vec::new();
    let mut baskets = Vec::new();
    for i in 0..4 {
        items.push(server_name(&get(&proxy.url(&format!("/item/{i}"))).await.2).to_owned());
        baskets.push(server_name(&get(&proxy.url(&format!("/basket?id={i}"))).await.2).to_owned());
    }
    assert_eq!(items, ["node1", "node2", "node1", "node2"]);
    assert_eq!(baskets, ["node3", "node4", "node3", "node4"]);

    let mut other = Vec::new();
    for path in ["/", "/other", "/it", "/index.html"] {
        other.push(server_name(&get(&proxy.url(path)).await.2).to_owned());
    }
    assert_eq!(
        other,
        ["node1", "node2", "node3", "node1"],
        "default backend webservers"
    );

    // path_beg is a prefix match, as in HAProxy: /itemz is an item too.
    assert_eq!(server_name(&get(&proxy.url("/itemz")).await.2), "node1");
}

#[tokio::test]
async fn lab2_over_http2_prior_knowledge() {
    let servers = Servers::new();
    let n = lab(&servers).await;
    let proxy = Proxy::start(&lab2(&n)).await;
    let client = h2_client();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let req = http::Request::get(proxy.url("/basket/1"))
            .body(crate::support::empty())
            .unwrap();
        let (status, _, body) = send(&client, req).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("HTTP/1.1"),
            "the server is reached over HTTP/1.1: {body}"
        );
        seen.push(server_name(&body).to_owned());
    }
    assert_eq!(seen, ["node3", "node4", "node3"]);
}
