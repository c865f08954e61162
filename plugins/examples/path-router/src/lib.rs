//! `path-router`: lab 2's URI routing as a plugin. The routing table comes from the plugin's
//! config, `routes = "/item=items,/basket=baskets"`: the first prefix that the request path
//! starts with names the backend; when none matches the frontend's native rules decide
//! (`default_backend`).

use std::sync::OnceLock;

use wasp_plugin::{Request, RouteDecision, Router};

/// `(prefix, backend)` pairs in config order.
pub type Table = Vec<(String, String)>;

/// Parses `"/a=x,/b=y"`; entries without `=` or with an empty prefix or backend are skipped.
pub fn parse_routes(text: &str) -> Table {
    text.split(',')
        .filter_map(|entry| entry.trim().split_once('='))
        .map(|(prefix, backend)| (prefix.trim().to_owned(), backend.trim().to_owned()))
        .filter(|(prefix, backend)| !prefix.is_empty() && !backend.is_empty())
        .collect()
}

/// The backend for `path`, if a prefix matches.
pub fn decide<'t>(table: &'t Table, path: &str) -> Option<&'t str> {
    table
        .iter()
        .find(|(prefix, _)| path.starts_with(prefix.as_str()))
        .map(|(_, backend)| backend.as_str())
}

struct PathRouter;

fn table() -> &'static Table {
    // The config is fixed for the life of an instance: parse it once.
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| parse_routes(&wasp_plugin::config("routes").unwrap_or_default()))
}

impl Router for PathRouter {
    fn route(req: Request) -> RouteDecision {
        match decide(table(), &req.path) {
            Some(backend) => RouteDecision::Backend(backend.to_owned()),
            None => RouteDecision::Defer,
        }
    }
}

wasp_plugin::export_router!(PathRouter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab2_table() {
        let t = parse_routes("/item=items, /basket=baskets");
        assert_eq!(decide(&t, "/item/1"), Some("items"));
        assert_eq!(
            decide(&t, "/items"),
            Some("items"),
            "path_beg, as in HAProxy"
        );
        assert_eq!(decide(&t, "/basket"), Some("baskets"));
        assert_eq!(decide(&t, "/"), None);
        assert_eq!(decide(&t, "/other/item"), None);
    }

    #[test]
    fn first_match_wins_and_junk_is_skipped() {
        let t = parse_routes("/a=first,/a/b=second,junk,=x,/c=");
        assert_eq!(t.len(), 2);
        assert_eq!(decide(&t, "/a/b/c"), Some("first"));
        assert!(parse_routes("").is_empty());
    }
}
