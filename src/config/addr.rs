//! Addresses: listener binds (`":80"`, `"127.0.0.1:8080"`, `"[::1]:80"`) and server addresses
//! (`"node1:8080"`), which are resolved once, at load time.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum AddrError {
    #[error("empty address")]
    Empty,
    #[error("missing port in \"{0}\"")]
    MissingPort(String),
    #[error("missing host in \"{0}\"")]
    MissingHost(String),
    #[error("invalid port \"{port}\" in \"{addr}\"")]
    BadPort { port: String, addr: String },
    #[error("port 0 is not a valid server port")]
    PortZero,
    #[error("IPv6 address in \"{0}\" needs brackets")]
    Ipv6NeedsBrackets(String),
    #[error("missing \"]\" in \"{0}\"")]
    UnclosedBracket(String),
    #[error("bind address \"{0}\" is not an IP address")]
    BindHost(String),
    #[error("bind address \"{addr}\" is the IPv4 address {v4} in IPv6 form")]
    MappedV4 { addr: String, v4: Ipv4Addr },
    #[error("cannot resolve host \"{0}\"")]
    Unresolvable(String),
}

impl AddrError {
    pub(crate) fn help(&self) -> Option<String> {
        Some(match self {
            AddrError::Empty | AddrError::MissingPort(_) | AddrError::MissingHost(_) => {
                "write it as host:port, e.g. \"127.0.0.1:8080\"".to_owned()
            }
            AddrError::BadPort { .. } => "a port is a number up to 65535".to_owned(),
            AddrError::PortZero => "write the port the server listens on".to_owned(),
            AddrError::Ipv6NeedsBrackets(_) | AddrError::UnclosedBracket(_) => {
                "write \"[ADDRESS]:PORT\", e.g. \"[::1]:8080\"".to_owned()
            }
            AddrError::BindHost(_) => {
                "bind takes an IP address: \"127.0.0.1:PORT\" for loopback, \":PORT\" for all \
                 interfaces"
                    .to_owned()
            }
            AddrError::MappedV4 { v4, .. } => {
                format!("an IPv6 socket cannot listen on it; write \"{v4}:PORT\"")
            }
            AddrError::Unresolvable(_) => {
                "check the name (and /etc/hosts or DNS), or write an IP address".to_owned()
            }
        })
    }
}

/// Parses a listener address: `"host:port"` where host is an IP address, `"[v6]:port"`,
/// `":80"` or `"*:80"` (all IPv4 interfaces), `"localhost:80"` (127.0.0.1). Port 0 asks the
/// OS for an ephemeral port.
pub fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    bind(s).map_err(|e| match e.help() {
        Some(help) => format!("{e}; {help}"),
        None => e.to_string(),
    })
}

pub(crate) fn bind(s: &str) -> Result<SocketAddr, AddrError> {
    let (host, port) = split_host_port(s)?;
    let ip = match host {
        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => host
            .parse()
            .map_err(|_| AddrError::BindHost(s.to_owned()))?,
    };
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(AddrError::MappedV4 {
            addr: s.to_owned(),
            v4,
        });
    }
    Ok(SocketAddr::new(ip, port))
}

/// Resolves a server address (`"node1:8080"`, `"10.0.0.1:80"`, `"[::1]:80"`) to one socket
/// address: the first IPv4 address the resolver returns, else its first address.
pub(crate) fn resolve_server(s: &str) -> Result<SocketAddr, AddrError> {
    let (host, port) = split_host_port(s)?;
    if host.is_empty() {
        return Err(AddrError::MissingHost(s.to_owned()));
    }
    if port == 0 {
        return Err(AddrError::PortZero);
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let unresolvable = || AddrError::Unresolvable(host.to_owned());
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| unresolvable())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(unresolvable)
}

/// Whether two listeners would fight over the same port: same port (not 0, which asks for an
/// ephemeral one) and the same IP, or a wildcard covering the other (`0.0.0.0` covers IPv4,
/// `[::]` covers both families, as on Linux with the default `bindv6only = 0`).
pub(crate) fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let covers = |w: IpAddr, other: IpAddr| match w {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    };
    a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip())
}

/// Splits `host:port` / `[v6]:port` into its host (without brackets) and port.
fn split_host_port(s: &str) -> Result<(&str, u16), AddrError> {
    if s.is_empty() {
        return Err(AddrError::Empty);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddrError::UnclosedBracket(s.to_owned()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| AddrError::MissingPort(s.to_owned()))?;
        (host, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| AddrError::MissingPort(s.to_owned()))?;
        if host.contains(':') {
            return Err(AddrError::Ipv6NeedsBrackets(s.to_owned()));
        }
        (host, port)
    };
    if port.is_empty() {
        return Err(AddrError::MissingPort(s.to_owned()));
    }
    // Digits only: Rust's integer parse would also take a sign (`:+80`).
    let port = Some(port)
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| AddrError::BadPort {
            port: port.to_owned(),
            addr: s.to_owned(),
        })?;
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{AddrError, bind, overlaps, parse_bind, resolve_server};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn binds() {
        assert_eq!(parse_bind("127.0.0.1:8080"), Ok(sa("127.0.0.1:8080")));
        assert_eq!(parse_bind(":80"), Ok(sa("0.0.0.0:80")));
        assert_eq!(parse_bind("*:80"), Ok(sa("0.0.0.0:80")));
        assert_eq!(parse_bind("[::1]:80"), Ok(sa("[::1]:80")));
        assert_eq!(parse_bind("[::]:443"), Ok(sa("[::]:443")));
        assert_eq!(parse_bind("127.0.0.1:0"), Ok(sa("127.0.0.1:0")));
        assert_eq!(parse_bind("localhost:8080"), Ok(sa("127.0.0.1:8080")));
    }

    #[test]
    fn bad_binds() {
        assert_eq!(bind(""), Err(AddrError::Empty));
        assert_eq!(
            bind("127.0.0.1"),
            Err(AddrError::MissingPort("127.0.0.1".into()))
        );
        assert_eq!(
            bind("127.0.0.1:"),
            Err(AddrError::MissingPort("127.0.0.1:".into()))
        );
        assert_eq!(
            bind("127.0.0.1:99999"),
            Err(AddrError::BadPort {
                port: "99999".into(),
                addr: "127.0.0.1:99999".into()
            })
        );
        assert_eq!(bind("[::1"), Err(AddrError::UnclosedBracket("[::1".into())));
        assert_eq!(
            bind("[::1:80"),
            Err(AddrError::UnclosedBracket("[::1:80".into()))
        );
        assert_eq!(
            bind("127.0.0.1:+8080"),
            Err(AddrError::BadPort {
                port: "+8080".into(),
                addr: "127.0.0.1:+8080".into()
            })
        );
        assert_eq!(
            bind("1.2.3.4:http"),
            Err(AddrError::BadPort {
                port: "http".into(),
                addr: "1.2.3.4:http".into()
            })
        );
        assert_eq!(
            bind("::1:80"),
            Err(AddrError::Ipv6NeedsBrackets("::1:80".into()))
        );
        assert_eq!(bind("::1"), Err(AddrError::Ipv6NeedsBrackets("::1".into())));
        assert_eq!(
            bind("[::ffff:127.0.0.1]:80"),
            Err(AddrError::MappedV4 {
                addr: "[::ffff:127.0.0.1]:80".into(),
                v4: std::net::Ipv4Addr::LOCALHOST
            })
        );
        assert_eq!(bind("[::1]"), Err(AddrError::MissingPort("[::1]".into())));
        assert_eq!(
            bind("example.com:80"),
            Err(AddrError::BindHost("example.com:80".into()))
        );
        assert_eq!(
            bind("300.1.1.1:80"),
            Err(AddrError::BindHost("300.1.1.1:80".into()))
        );
        assert!(
            parse_bind("127.0.0.1")
                .unwrap_err()
                .starts_with("missing port in \"127.0.0.1\"; ")
        );
    }

    #[test]
    fn servers() {
        assert_eq!(resolve_server("10.0.0.1:80"), Ok(sa("10.0.0.1:80")));
        assert_eq!(resolve_server("[::1]:9000"), Ok(sa("[::1]:9000")));
        assert_eq!(resolve_server("localhost:9001"), Ok(sa("127.0.0.1:9001")));
        assert_eq!(resolve_server("10.0.0.1:0"), Err(AddrError::PortZero));
        assert_eq!(
            resolve_server(":80"),
            Err(AddrError::MissingHost(":80".into()))
        );
        assert_eq!(
            resolve_server("nosuchhost.invalid:80"),
            Err(AddrError::Unresolvable("nosuchhost.invalid".into()))
        );
    }

    #[test]
    fn overlapping_listeners() {
        assert!(overlaps(sa("127.0.0.1:80"), sa("127.0.0.1:80")));
        assert!(overlaps(sa("0.0.0.0:80"), sa("127.0.0.1:80")));
        assert!(overlaps(sa("127.0.0.1:80"), sa("0.0.0.0:80")));
        assert!(overlaps(sa("[::]:80"), sa("127.0.0.1:80")));
        assert!(!overlaps(sa("0.0.0.0:80"), sa("[::1]:80")));
        assert!(!overlaps(sa("127.0.0.1:80"), sa("127.0.0.2:80")));
        assert!(!overlaps(sa("127.0.0.1:80"), sa("127.0.0.1:81")));
        assert!(!overlaps(sa("127.0.0.1:0"), sa("127.0.0.1:0")));
    }
}
