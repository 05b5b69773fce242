//! Query strings and request bodies as ordered name/value pairs. A map would not do: Gmail
//! repeats `metadataHeaders`, and a next-page link must keep every parameter in its place.

use poem::Request;

pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    pub fn query(req: &Request) -> Params {
        Params::form(req.uri().query().unwrap_or(""))
    }

    /// An `application/x-www-form-urlencoded` text; what cannot be decoded counts as empty.
    pub fn form(text: &str) -> Params {
        Params(serde_urlencoded::from_str(text).unwrap_or_default())
    }

    /// A token request's body: a JSON object (Atlassian) or a form (everyone, Atlassian too).
    pub fn body(content_type: Option<&str>, body: &str) -> Params {
        if !content_type.is_some_and(|ct| ct.starts_with("application/json")) {
            return Params::form(body);
        }
        let object = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(body)
            .unwrap_or_default();
        Params(
            object
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_str()?.to_owned())))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Every value given for `name`, in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// A page size: `default` when absent or unreadable, at most `max`, at least 1.
    pub fn size(&self, name: &str, default: usize, max: usize) -> usize {
        self.get(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
            .clamp(1, max)
    }

    /// This query string with `name` set to `value`: in its place when present, else at the end.
    pub fn with(&self, name: &str, value: &str) -> String {
        let mut pairs = self.0.clone();
        match pairs.iter_mut().find(|(key, _)| key == name) {
            Some(pair) => pair.1 = value.to_owned(),
            None => pairs.push((name.to_owned(), value.to_owned())),
        }
        serde_urlencoded::to_string(pairs).expect("strings encode")
    }
}
