//! Compiled ACLs: the matchers built from `config::acl` specs, evaluated per request.
