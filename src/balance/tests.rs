//! The contract every balancer keeps, checked against each native algorithm as
//! `build_balancer` builds it from a backend config (and, in `plugin::contract`, against the
//! example balancer plugins): which servers may be picked at all, and when backups are.

use std::collections::BTreeSet;

use http::HeaderName;

use crate::balance::testkit::{BACKEND, Lab, Req, pick, server};
use crate::balance::{Balancer, build_balancer};
use crate::config::{
    AdminState, Backend, Balance, CheckParams, DEFAULT_ERROR_LIMIT, Mode, Server, Timeouts,
};
use crate::health::state::Health;

fn algorithms() -> Vec<Balance> {
    vec![
        Balance::RoundRobin,
        Balance::StaticRr,
        Balance::LeastConn,
        Balance::Random,
        Balance::Source,
        Balance::Uri { whole: false },
        Balance::Uri { whole: true },
        Balance::Hdr(HeaderName::from_static("x-user")),
        Balance::First,
    ]
}

/// A balancer under test: how to build it over a lab's servers, and whether it is `first`
/// (which always takes the first eligible server instead of spreading).
pub(crate) struct Subject<'a> {
    pub name: String,
    pub build: &'a dyn Fn(&Lab) -> Box<dyn Balancer>,
    pub first_only: bool,
}

fn native(balance: &Balance) -> (String, bool) {
    (format!("{balance:?}"), *balance == Balance::First)
}

/// A backend config with `lab`'s servers and `balance`.
pub(crate) fn backend(balance: &Balance, lab: &Lab) -> Backend {
    Backend {
        name: BACKEND.into(),
        mode: Mode::Http,
        balance: balance.clone(),
        servers: lab.confs.clone(),
        timeouts: Timeouts::default(),
        retries: 3,
        redispatch: true,
        maxconn: None,
        observe: None,
        error_limit: DEFAULT_ERROR_LIMIT,
        check: CheckParams::default(),
        proto: Default::default(),
        tls: None,
    }
}

fn build(balance: &Balance, lab: &Lab) -> Box<dyn Balancer> {
    build_balancer(&backend(balance, lab), &lab.servers, lab.backend())
}

/// Runs every contract check against every native algorithm.
fn for_each_native(check: fn(&Subject<'_>)) {
    for balance in algorithms() {
        let (name, first_only) = native(&balance);
        let build = |lab: &Lab| build(&balance, lab);
        check(&Subject {
            name,
            build: &build,
            first_only,
        });
    }
}

/// The servers 200 requests with distinct keys (client, path, `x-user`) went to.
fn spread(b: &dyn Balancer, tried: &[usize]) -> BTreeSet<Option<usize>> {
    (0..200).map(|k| pick(b, &Req::new(k), tried)).collect()
}

fn set(servers: &[usize]) -> BTreeSet<Option<usize>> {
    servers.iter().map(|&i| Some(i)).collect()
}

#[test]
fn drained_maint_down_weightless_full_and_tried_servers_are_never_picked() {
    for_each_native(never_picks_ineligible);
}

pub(crate) fn never_picks_ineligible(s: &Subject<'_>) {
    let balance = &s.name;
    {
        let lab = Lab::from_confs(
            (0..8)
                .map(|i| Server {
                    maxconn: (i == 4).then_some(1),
                    ..server(i, 1)
                })
                .collect(),
        );
        let b = (s.build)(&lab);
        let all_up = if s.first_only {
            set(&[0])
        } else {
            set(&[0, 1, 2, 3, 4, 5, 6, 7])
        };
        assert_eq!(spread(&*b, &[]), all_up, "{balance:?}: all up");
        lab.servers[0].set_admin(AdminState::Drain);
        lab.servers[1].set_admin(AdminState::Maint);
        lab.servers[2].set_health(Health::Down);
        lab.servers[3].set_weight(0);
        let _full = lab.servers[4].begin_request();
        let got = spread(&*b, &[5]);
        assert!(
            !got.is_empty() && got.is_subset(&set(&[6, 7])),
            "{balance:?}: {got:?}"
        );
        assert_eq!(
            spread(&*b, &[5, 6, 7]),
            BTreeSet::from([None]),
            "{balance:?}"
        );
    }
}

#[test]
fn backup_servers_serve_only_while_every_active_server_is_down() {
    for_each_native(backups_only_when_actives_are_down);
}

pub(crate) fn backups_only_when_actives_are_down(s: &Subject<'_>) {
    let balance = &s.name;
    {
        let backup = |i| Server {
            backup: true,
            ..server(i, 1)
        };
        let lab = Lab::from_confs(vec![server(0, 1), server(1, 1), backup(2), backup(3)]);
        let b = (s.build)(&lab);
        assert!(spread(&*b, &[]).is_subset(&set(&[0, 1])), "{balance:?}");
        lab.servers[0].set_up(false);
        assert_eq!(spread(&*b, &[]), set(&[1]), "{balance:?}: one active left");
        lab.servers[1].set_admin(AdminState::Maint);
        let backups = spread(&*b, &[]);
        if s.first_only {
            assert_eq!(backups, set(&[2]));
        } else {
            assert_eq!(
                backups,
                set(&[2, 3]),
                "{balance:?}: the algorithm spreads backups too"
            );
        }
        lab.servers[1].set_admin(AdminState::Ready);
        assert_eq!(
            spread(&*b, &[]),
            set(&[1]),
            "{balance:?}: an active one is back"
        );
    }
}

#[test]
fn a_full_or_tried_active_server_does_not_bring_in_the_backups() {
    for_each_native(full_or_tried_keeps_backups_out);
}

pub(crate) fn full_or_tried_keeps_backups_out(s: &Subject<'_>) {
    let balance = &s.name;
    {
        let lab = Lab::from_confs(vec![
            Server {
                maxconn: Some(1),
                ..server(0, 1)
            },
            Server {
                backup: true,
                ..server(1, 1)
            },
        ]);
        let b = (s.build)(&lab);
        assert_eq!(
            spread(&*b, &[0]),
            BTreeSet::from([None]),
            "{balance:?}: tried"
        );
        let _full = lab.servers[0].begin_request();
        assert_eq!(
            spread(&*b, &[]),
            BTreeSet::from([None]),
            "{balance:?}: full"
        );
    }
}

#[test]
fn no_usable_server_gives_none() {
    for_each_native(none_when_none_usable);
}

pub(crate) fn none_when_none_usable(s: &Subject<'_>) {
    let balance = &s.name;
    {
        let lab = Lab::new(&[1, 1]);
        let b = (s.build)(&lab);
        lab.servers[0].set_up(false);
        lab.servers[1].set_weight(0);
        assert_eq!(spread(&*b, &[]), BTreeSet::from([None]), "{balance:?}");
        let empty = Lab::new(&[]);
        let b = (s.build)(&empty);
        assert_eq!(
            spread(&*b, &[]),
            BTreeSet::from([None]),
            "{balance:?}: no servers"
        );
    }
}
