//! The native router: HAProxy-style `use_backend` rules over named ACLs, then the default backend.
//!
//! Built once per snapshot: ACL names are resolved to indexes, backends to snapshot indexes,
//! ACLs compiled. Per request, rules are tried in order and the first match wins. A named ACL
//! used by several terms is evaluated at most once per request: its result is memoised in a
//! small bitset on the stack (ACLs used once need no memo at all).

use std::collections::HashMap;

use crate::config::Frontend;
use crate::config::acl::{AclRef, Condition};
use crate::routing::acl::{CompileError, CompiledAcl};
use crate::routing::{RequestView, RouteDecision, Router};

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
        let mut specs = Vec::new();
        for acl in &frontend.acls {
            match by_name.get(acl.name.as_str()) {
                Some(&i) => {
                    specs[i] =
                        std::mem::replace(&mut specs[i], acl.spec.clone()).or(acl.spec.clone())
                }
                None => {
                    by_name.insert(&acl.name, specs.len());
                    specs.push(acl.spec.clone());
                }
            }
        }
        let names: Vec<&str> = {
            let mut names = vec![""; specs.len()];
            by_name.iter().for_each(|(name, &i)| names[i] = name);
            names
        };
        let acls = specs
            .iter()
            .zip(&names)
            .map(|(spec, name)| CompiledAcl::compile(spec).map_err(|e| acl_error(name, e)))
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

    fn holds(&self, rule: &Rule, req: &RequestView<'_>, memo: &mut Memo) -> bool {
        if rule.any_of.is_empty() {
            return true;
        }
        rule.any_of.iter().any(|all_of| {
            all_of.iter().all(|term| {
                let value = match &term.acl {
                    TermAcl::Inline(acl) => acl.matches(req),
                    TermAcl::Named { index, memo: None } => self.acls[*index].matches(req),
                    TermAcl::Named {
                        index,
                        memo: Some(slot),
                    } => match memo.get(*slot) {
                        Some(value) => value,
                        None => {
                            let value = self.acls[*index].matches(req);
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

impl Router for AclRouter {
    fn route(&self, req: &RequestView<'_>) -> RouteDecision {
        let mut memo = Memo::new(self.memo_slots);
        for rule in &self.rules {
            if self.holds(rule, req, &mut memo) != rule.negate {
                return RouteDecision::Backend(rule.backend);
            }
        }
        self.default_backend
            .map_or(RouteDecision::NoBackend, RouteDecision::Backend)
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
    use super::*;
}
