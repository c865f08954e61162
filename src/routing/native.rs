//! The native router: HAProxy-style `use_backend` rules over named ACLs, then the default backend.
//!
//! Built once per snapshot: ACL names are resolved to indexes, backends to snapshot indexes,
//! ACLs compiled. Per request, rules are tried in order and the first match wins. A named ACL
//! used by several terms is evaluated at most once per request: its result is memoised in a
//! small bitset on the stack (ACLs used once need no memo at all).

use std::collections::HashMap;

use crate::config::Frontend;
use crate::config::acl::{AclRef, AclSpec, Condition};
use crate::routing::acl::{CompileError, CompiledAcl};
use crate::routing::{ConnView, RequestView, RouteDecision, Router};

/// Memo slots that live on the stack: 2 bits each, in `MEMO_WORDS` words.
const MEMO_WORDS: usize = 8;
const MEMO_STACK_SLOTS: usize = MEMO_WORDS * 32;

/// Why a router could not be built from a (validated) frontend. These are loader bugs or
/// resource limits, never user typos: the loader reports those with positions first.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("frontend {frontend}: backend \"{backend}\" is not in the snapshot")]
    UnknownBackend { frontend: String, backend: String },
    #[error("frontend {frontend}: condition uses undefined acl \"{acl}\"")]
    UndefinedAcl { frontend: String, acl: String },
    #[error("frontend {frontend}: acl {acl}: {source}")]
    Acl {
        frontend: String,
        /// The ACL's name, or `{ ... }` for an inline one.
        acl: String,
        source: CompileError,
    },
}

/// Routes by `use_backend` rules, then `default_backend`.
#[derive(Debug)]
pub struct AclRouter {
    /// Named ACLs, indexed by [`TermAcl::Named`].
    acls: Box<[CompiledAcl]>,
    rules: Box<[Rule]>,
    default_backend: Option<usize>,
    /// How many named ACLs need a memo slot (those referenced more than once).
    memo_slots: usize,
}

#[derive(Debug)]
struct Rule {
    backend: usize,
    /// `unless`: the rule applies when the condition is false.
    negate: bool,
    /// OR of ANDs; empty means "always".
    any_of: Box<[Box<[Term]>]>,
}

#[derive(Debug)]
struct Term {
    negate: bool,
    acl: TermAcl,
}

#[derive(Debug)]
enum TermAcl {
    Named { index: usize, memo: Option<usize> },
    Inline(CompiledAcl),
}

impl AclRouter {
    /// `backend_index` maps a backend name to its index in the snapshot; names were validated
    /// by the loader, so a miss is a bug, reported as an error.
    pub fn build(
        frontend: &Frontend,
        backend_index: impl Fn(&str) -> Option<usize>,
    ) -> Result<AclRouter, BuildError> {
        let resolve = |backend: &str| {
            backend_index(backend).ok_or_else(|| BuildError::UnknownBackend {
                frontend: frontend.name.clone(),
                backend: backend.to_owned(),
            })
        };
        let acl_error = |acl: &str, source| BuildError::Acl {
            frontend: frontend.name.clone(),
            acl: acl.to_owned(),
            source,
        };

        // Named ACLs; the same name on several lines means any of them.
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut named: Vec<(&str, AclSpec)> = Vec::new();
        for acl in &frontend.acls {
            match by_name.get(acl.name.as_str()) {
                Some(&i) => named[i].1 = named[i].1.clone().or(acl.spec.clone()),
                None => {
                    by_name.insert(&acl.name, named.len());
                    named.push((&acl.name, acl.spec.clone()));
                }
            }
        }
        let acls = named
            .iter()
            .map(|(name, spec)| CompiledAcl::compile(spec).map_err(|e| acl_error(name, e)))
            .collect::<Result<Box<[_]>, _>>()?;

        // Only ACLs referenced more than once need a memo slot.
        let mut uses = vec![0usize; acls.len()];
        for rule in &frontend.rules {
            for (_, name) in rule.condition.acl_names() {
                if let Some(&i) = by_name.get(name) {
                    uses[i] += 1;
                }
            }
        }
        let mut memo_of = vec![None; acls.len()];
        let mut memo_slots = 0;
        for (i, _) in uses.iter().enumerate().filter(|&(_, &n)| n > 1) {
            memo_of[i] = Some(memo_slots);
            memo_slots += 1;
        }

        let compile_condition = |condition: &Condition| -> Result<Box<[Box<[Term]>]>, BuildError> {
            condition
                .alternatives()
                .iter()
                .map(|all_of| {
                    all_of
                        .iter()
                        .map(|term| {
                            let acl = match &term.acl {
                                AclRef::Named { name, .. } => {
                                    let index = *by_name.get(name.as_str()).ok_or_else(|| {
                                        BuildError::UndefinedAcl {
                                            frontend: frontend.name.clone(),
                                            acl: name.clone(),
                                        }
                                    })?;
                                    TermAcl::Named {
                                        index,
                                        memo: memo_of[index],
                                    }
                                }
                                AclRef::Inline { spec, .. } => TermAcl::Inline(
                                    CompiledAcl::compile(spec)
                                        .map_err(|e| acl_error("{ ... }", e))?,
                                ),
                            };
                            Ok(Term {
                                negate: term.negate,
                                acl,
                            })
                        })
                        .collect()
                })
                .collect()
        };
        let rules = frontend
            .rules
            .iter()
            .map(|rule| {
                Ok(Rule {
                    backend: resolve(&rule.backend)?,
                    negate: rule.negate,
                    any_of: compile_condition(&rule.condition)?,
                })
            })
            .collect::<Result<_, BuildError>>()?;
        let default_backend = frontend
            .default_backend
            .as_deref()
            .map(resolve)
            .transpose()?;
        Ok(AclRouter {
            acls,
            rules,
            default_backend,
            memo_slots,
        })
    }

    fn holds(&self, rule: &Rule, eval: &impl Fn(&CompiledAcl) -> bool, memo: &mut Memo) -> bool {
        if rule.any_of.is_empty() {
            return true;
        }
        rule.any_of.iter().any(|all_of| {
            all_of.iter().all(|term| {
                let value = match &term.acl {
                    TermAcl::Inline(acl) => eval(acl),
                    TermAcl::Named { index, memo: None } => eval(&self.acls[*index]),
                    TermAcl::Named {
                        index,
                        memo: Some(slot),
                    } => match memo.get(*slot) {
                        Some(value) => value,
                        None => {
                            let value = eval(&self.acls[*index]);
                            memo.set(*slot, value);
                            value
                        }
                    },
                };
                value != term.negate
            })
        })
    }
}

impl AclRouter {
    /// The first rule whose condition holds (ACLs evaluated by `eval`), else the default.
    fn decide(&self, eval: impl Fn(&CompiledAcl) -> bool) -> RouteDecision {
        let mut memo = Memo::new(self.memo_slots);
        for rule in &self.rules {
            if self.holds(rule, &eval, &mut memo) != rule.negate {
                return RouteDecision::Backend(rule.backend);
            }
        }
        self.default_backend
            .map_or(RouteDecision::NoBackend, RouteDecision::Backend)
    }
}

impl Router for AclRouter {
    fn route(&self, req: &RequestView<'_>) -> RouteDecision {
        self.decide(|acl| acl.matches(req))
    }

    fn route_conn(&self, conn: &ConnView<'_>) -> RouteDecision {
        self.decide(|acl| acl.matches_conn(conn))
    }
}

/// Per-request ACL results: 2 bits per slot (known, value). On the stack up to
/// `MEMO_STACK_SLOTS` shared ACLs; a frontend with more shared ACLs than that pays one
/// allocation per request.
enum Memo {
    Stack([u64; MEMO_WORDS]),
    Heap(Vec<u64>),
}

impl Memo {
    fn new(slots: usize) -> Self {
        if slots <= MEMO_STACK_SLOTS {
            Self::Stack([0; MEMO_WORDS])
        } else {
            Self::Heap(vec![0; slots.div_ceil(32)])
        }
    }

    fn words(&mut self) -> &mut [u64] {
        match self {
            Self::Stack(words) => words,
            Self::Heap(words) => words,
        }
    }

    fn get(&mut self, slot: usize) -> Option<bool> {
        let word = self.words()[slot / 32] >> (slot % 32 * 2);
        (word & 1 == 1).then_some(word & 2 == 2)
    }

    fn set(&mut self, slot: usize, value: bool) {
        self.words()[slot / 32] |= (1 | u64::from(value) << 1) << (slot % 32 * 2);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http::{HeaderMap, Method};

    use super::{AclRouter, BuildError, Memo};
    use crate::config::acl::{Condition, parse_acl, parse_condition};
    use crate::config::{Frontend, Mode, NamedAcl, Timeouts, UseBackend};
    use crate::routing::{ConnView, RequestView, RouteDecision, Router};

    const BACKENDS: [&str; 4] = ["webservers", "items", "baskets", "admin"];

    fn index(name: &str) -> Option<usize> {
        BACKENDS.iter().position(|b| *b == name)
    }

    fn frontend(acls: &[(&str, &str)], rules: &[(&str, &str)], default: Option<&str>) -> Frontend {
        Frontend {
            name: "web".into(),
            binds: vec![crate::config::Bind {
                addr: "127.0.0.1:8080".parse().unwrap(),
                tls: None,
                accept_proxy: None,
            }],
            redirect: None,
            mode: Mode::Http,
            acls: acls
                .iter()
                .map(|(name, text)| NamedAcl {
                    name: (*name).into(),
                    spec: parse_acl(text).unwrap(),
                })
                .collect(),
            rules: rules
                .iter()
                .map(|(backend, cond)| {
                    let (negate, cond) = match cond.strip_prefix("unless ") {
                        Some(c) => (true, c),
                        None => (false, cond.strip_prefix("if ").unwrap_or(cond)),
                    };
                    let condition = if cond.is_empty() {
                        Condition::always()
                    } else {
                        parse_condition(cond).unwrap()
                    };
                    UseBackend {
                        backend: (*backend).into(),
                        condition,
                        negate,
                    }
                })
                .collect(),
            default_backend: default.map(Into::into),
            timeouts: Timeouts::default(),
            inspect_delay: std::time::Duration::from_secs(5),
            forwardfor: true,
            max_header_size: 64 * 1024,
            router: None,
            maxconn: None,
        }
    }

    fn router(acls: &[(&str, &str)], rules: &[(&str, &str)], default: Option<&str>) -> AclRouter {
        AclRouter::build(&frontend(acls, rules, default), index).unwrap()
    }

    fn route(router: &AclRouter, method: Method, path: &str) -> RouteDecision {
        let headers = HeaderMap::new();
        let client: SocketAddr = "10.0.0.5:50000".parse().unwrap();
        let view = RequestView {
            method: &method,
            scheme: "http",
            host: "example.com",
            path,
            query: None,
            headers: &headers,
            client,
            local_port: 80,
            frontend: "web",
            sni: "",
        };
        router.route(&view)
    }

    fn get(router: &AclRouter, path: &str) -> RouteDecision {
        route(router, Method::GET, path)
    }

    fn to(name: &str) -> RouteDecision {
        RouteDecision::Backend(index(name).unwrap())
    }

    fn lab() -> AclRouter {
        router(
            &[
                ("is_item", "path_beg /item"),
                ("is_basket", "path_beg /basket"),
            ],
            &[("items", "is_item"), ("baskets", "is_basket")],
            Some("webservers"),
        )
    }

    #[test]
    fn connections_route_on_sni_destination_port_and_source() {
        let r = router(
            &[
                ("shop", "req.ssl_sni -i shop.example"),
                ("tls_port", "dst_port 443 8443:8444"),
                ("inside", "src 10.0.0.0/8"),
                ("web", "path_beg /"),
            ],
            &[
                ("items", "shop tls_port"),
                ("baskets", "inside !tls_port"),
                ("admin", "web"),
            ],
            Some("webservers"),
        );
        let conn = |client: &str, port: u16, sni: Option<&'static str>| ConnView {
            client: client.parse().unwrap(),
            local: SocketAddr::from(([127, 0, 0, 1], port)),
            sni,
            frontend: "tcp",
        };
        assert_eq!(
            r.route_conn(&conn("192.0.2.1:1", 443, Some("SHOP.example"))),
            to("items")
        );
        assert_eq!(
            r.route_conn(&conn("192.0.2.1:1", 8444, Some("shop.example"))),
            to("items")
        );
        assert_eq!(
            r.route_conn(&conn("10.1.2.3:1", 8445, Some("shop.example"))),
            to("baskets")
        );
        // No name (not TLS, or none sent) is an absent sample; HTTP fetches never match.
        assert_eq!(
            r.route_conn(&conn("192.0.2.1:1", 443, None)),
            to("webservers")
        );
    }

    #[test]
    fn lab_two_routes_by_path_prefix() {
        let r = lab();
        assert_eq!(get(&r, "/item/1"), to("items"));
        assert_eq!(get(&r, "/items"), to("items"));
        assert_eq!(get(&r, "/basket"), to("baskets"));
        assert_eq!(get(&r, "/"), to("webservers"));
        assert_eq!(get(&r, "/x/item"), to("webservers"));
    }

    #[test]
    fn first_match_wins() {
        let r = router(
            &[("api", "path_beg /api"), ("admin", "path_beg /api/admin")],
            &[("items", "api"), ("admin", "admin")],
            None,
        );
        assert_eq!(get(&r, "/api/admin"), to("items"));
        let r = router(
            &[("api", "path_beg /api"), ("admin", "path_beg /api/admin")],
            &[("admin", "admin"), ("items", "api")],
            None,
        );
        assert_eq!(get(&r, "/api/admin"), to("admin"));
        assert_eq!(get(&r, "/api/x"), to("items"));
    }

    #[test]
    fn no_match_and_no_default_is_no_backend() {
        let r = router(
            &[("is_item", "path_beg /item")],
            &[("items", "is_item")],
            None,
        );
        assert_eq!(get(&r, "/other"), RouteDecision::NoBackend);
        let empty = router(&[], &[], None);
        assert_eq!(get(&empty, "/"), RouteDecision::NoBackend);
        let only_default = router(&[], &[], Some("baskets"));
        assert_eq!(get(&only_default, "/"), to("baskets"));
    }

    #[test]
    fn unless_applies_when_the_condition_is_false() {
        let r = router(
            &[("is_get", "method GET HEAD")],
            &[("admin", "unless is_get")],
            Some("webservers"),
        );
        assert_eq!(route(&r, Method::POST, "/"), to("admin"));
        assert_eq!(route(&r, Method::GET, "/"), to("webservers"));
    }

    #[test]
    fn negation() {
        let r = router(
            &[("is_item", "path_beg /item")],
            &[("items", "!is_item")],
            Some("webservers"),
        );
        assert_eq!(get(&r, "/x"), to("items"));
        assert_eq!(get(&r, "/item"), to("webservers"));
        // `unless !a` is `if a`.
        let r = router(
            &[("is_item", "path_beg /item")],
            &[("items", "unless !is_item")],
            None,
        );
        assert_eq!(get(&r, "/item"), to("items"));
        assert_eq!(get(&r, "/x"), RouteDecision::NoBackend);
    }

    #[test]
    fn and_binds_tighter_than_or() {
        // a b or c  ==  (a and b) or c
        let acls = [
            ("a", "path_sub a"),
            ("b", "path_sub b"),
            ("c", "path_sub c"),
        ];
        for cond in ["a b or c", "a b || c"] {
            let r = router(&acls, &[("items", cond)], None);
            for (path, expected) in [
                ("/ab", true),
                ("/a", false),
                ("/b", false),
                ("/c", true),
                ("/ac", true),
                ("/x", false),
                ("/abc", true),
            ] {
                let got = get(&r, path) == to("items");
                assert_eq!(got, expected, "{cond:?} on {path}");
            }
        }
        // a or b c  ==  a or (b and c)
        let r = router(&acls, &[("items", "a or b c")], None);
        assert_eq!(get(&r, "/a"), to("items"));
        assert_eq!(get(&r, "/b"), RouteDecision::NoBackend);
        assert_eq!(get(&r, "/bc"), to("items"));
    }

    #[test]
    fn inline_acls_in_rules() {
        let r = router(
            &[("is_get", "method GET")],
            &[
                ("admin", "{ path_beg /admin } !is_get"),
                ("items", "is_get { path_end .json }"),
            ],
            Some("webservers"),
        );
        assert_eq!(route(&r, Method::POST, "/admin/x"), to("admin"));
        assert_eq!(route(&r, Method::GET, "/admin/x"), to("webservers"));
        assert_eq!(route(&r, Method::GET, "/a.json"), to("items"));
    }

    #[test]
    fn same_acl_name_on_several_lines_is_any_of() {
        let r = router(
            &[("static", "path_beg /static"), ("static", "path_end .css")],
            &[("items", "static")],
            Some("webservers"),
        );
        assert_eq!(get(&r, "/static/x"), to("items"));
        assert_eq!(get(&r, "/a/b.css"), to("items"));
        assert_eq!(get(&r, "/a/b.js"), to("webservers"));
    }

    #[test]
    fn always_rule() {
        let r = router(&[], &[("baskets", "")], Some("webservers"));
        assert_eq!(get(&r, "/anything"), to("baskets"));
    }

    #[test]
    fn shared_acls_get_memo_slots_and_keep_their_value() {
        let acls = [
            ("a", "path_sub a"),
            ("b", "path_sub b"),
            ("once", "path_sub o"),
        ];
        let rules = [
            ("admin", "a b"),
            ("baskets", "!a once"),
            ("items", "a or b"),
        ];
        let r = router(&acls, &rules, Some("webservers"));
        assert_eq!(r.memo_slots, 2, "only a and b are used twice");
        // /a: rule 1 evaluates a (true) then b (false); rule 2 reads a from the memo (true -> !a
        // false); rule 3 reads a again.
        assert_eq!(get(&r, "/a"), to("items"));
        assert_eq!(get(&r, "/ab"), to("admin"));
        assert_eq!(get(&r, "/o"), to("baskets"));
        assert_eq!(get(&r, "/b"), to("items"));
        assert_eq!(get(&r, "/x"), to("webservers"));
    }

    #[test]
    fn memo_bits() {
        for slots in [
            1,
            super::MEMO_STACK_SLOTS,
            super::MEMO_STACK_SLOTS + 1,
            1000,
        ] {
            let mut memo = Memo::new(slots);
            assert_eq!(
                matches!(memo, Memo::Heap(_)),
                slots > super::MEMO_STACK_SLOTS
            );
            for slot in 0..slots {
                assert_eq!(memo.get(slot), None);
                memo.set(slot, slot % 3 == 0);
            }
            for slot in 0..slots {
                assert_eq!(
                    memo.get(slot),
                    Some(slot % 3 == 0),
                    "slot {slot} of {slots}"
                );
            }
        }
    }

    #[test]
    fn many_shared_acls_spill_to_the_heap_and_still_route() {
        let names: Vec<String> = (0..300).map(|i| format!("p{i}")).collect();
        let texts: Vec<String> = (0..300).map(|i| format!("path /p{i}")).collect();
        let acls: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(texts.iter().map(String::as_str))
            .collect();
        let conds: Vec<String> = names.iter().map(|n| format!("{n} {n}")).collect();
        let rules: Vec<(&str, &str)> = conds.iter().map(|c| ("items", c.as_str())).collect();
        let r = router(&acls, &rules, None);
        assert_eq!(r.memo_slots, 300);
        assert_eq!(get(&r, "/p299"), to("items"));
        assert_eq!(get(&r, "/p300"), RouteDecision::NoBackend);
    }

    #[test]
    fn build_errors() {
        let f = frontend(&[("a", "path /")], &[("nope", "a")], None);
        let e = AclRouter::build(&f, index).unwrap_err();
        assert!(
            matches!(&e, BuildError::UnknownBackend { backend, .. } if backend == "nope"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "frontend web: backend \"nope\" is not in the snapshot"
        );
        let f = frontend(&[], &[], Some("gone"));
        assert!(matches!(
            AclRouter::build(&f, index),
            Err(BuildError::UnknownBackend { .. })
        ));
        let f = frontend(&[("a", "path /")], &[("items", "a or b")], None);
        let e = AclRouter::build(&f, index).unwrap_err();
        assert_eq!(
            e.to_string(),
            "frontend web: condition uses undefined acl \"b\""
        );
    }

    #[test]
    fn router_is_shareable() {
        fn check<T: Router + 'static>() {}
        check::<AclRouter>();
    }
}
