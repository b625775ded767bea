//! TEMPORARY linear router; replaced by the indexed one from the router work.
use http::{HeaderMap, Method};

pub enum PathSpec {
    Exact(String),
    Prefix(String),
    Regex(String),
}
pub struct RouteSpec {
    pub name: String,
    pub path: PathSpec,
    pub hosts: Vec<String>,
    pub methods: Vec<Method>,
    pub headers: Vec<(http::HeaderName, String)>,
    pub query: Vec<(String, String)>,
}
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}
#[derive(Debug, thiserror::Error)]
#[error("bad regex")]
pub struct RouterError;
pub struct Router {
    specs: Vec<RouteSpec>,
    regexes: Vec<Option<regex::Regex>>,
}
pub struct Explanation {
    pub chosen: Option<usize>,
    pub near_misses: Vec<(usize, Miss)>,
}
#[derive(Debug)]
pub enum Miss {
    Path,
}
impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("path does not match")
    }
}
impl Router {
    pub fn new(specs: Vec<RouteSpec>) -> Result<Router, RouterError> {
        let regexes = specs
            .iter()
            .map(|s| match &s.path {
                PathSpec::Regex(r) => regex::Regex::new(r).map(Some).map_err(|_| RouterError),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Router { specs, regexes })
    }
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        self.specs.iter().enumerate().position(|(i, s)| {
            (s.methods.is_empty() || s.methods.contains(req.method))
                && match &s.path {
                    PathSpec::Exact(p) => p == req.path,
                    PathSpec::Prefix(p) => {
                        req.path.starts_with(p.as_str())
                            && (p == "/"
                                || req.path.len() == p.len()
                                || req.path.as_bytes()[p.len()] == b'/')
                    }
                    PathSpec::Regex(_) => self.regexes[i]
                        .as_ref()
                        .is_some_and(|r| r.is_match(req.path)),
                }
        })
    }
    pub fn explain(&self, req: &RequestView<'_>) -> Explanation {
        let chosen = self.find(req);
        Explanation {
            chosen,
            near_misses: (0..self.specs.len())
                .filter(|i| Some(*i) != chosen)
                .map(|i| (i, Miss::Path))
                .collect(),
        }
    }
    pub fn len(&self) -> usize {
        self.specs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }
    pub fn spec(&self, i: usize) -> &RouteSpec {
        &self.specs[i]
    }
}
