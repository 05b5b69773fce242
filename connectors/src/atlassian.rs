//! What Jira and Confluence share: one Atlassian OAuth app, the cloud site an OAuth grant
//! reaches through Atlassian's API gateway, the site URL an API token is used on directly,
//! and the check of a site URL a person types.

use serde::Deserialize;

use crate::{
    Account, ConnectorConfig, Provider, ProviderError, ProviderSettings,
    http::Http,
    join,
    oauth::{OAuthClient, TokenBody},
};

/// The Atlassian OAuth 2.0 (3LO) client for `provider` (Jira or Confluence), asking the
/// product's read scopes.
pub(crate) fn oauth_client(settings: &ProviderSettings, provider: Provider) -> Option<OAuthClient> {
    let (client_id, client_secret) = settings.client(provider)?;
    let scopes = match provider {
        Provider::Jira => "read:jira-work read:jira-user offline_access",
        _ => {
            "read:confluence-user read:task:confluence read:confluence-content.summary offline_access"
        }
    };
    Some(OAuthClient {
        provider,
        client_id,
        client_secret,
        authorize_url: join(&settings.atlassian_auth_url, "/authorize"),
        token_url: join(&settings.atlassian_auth_url, "/oauth/token"),
        scopes,
        // Atlassian's 3LO takes no PKCE; the client secret authenticates the exchange.
        pkce: false,
        token_body: TokenBody::Json,
        extra: &[("audience", "api.atlassian.com"), ("prompt", "consent")],
    })
}

/// Where `account`'s calls for `product` (`jira` or `confluence`) go: through the API
/// gateway for an OAuth grant, straight to the site for an API token.
pub(crate) fn base(
    api_url: &str,
    provider: Provider,
    product: &str,
    account: &Account,
) -> Result<String, ProviderError> {
    let missing = |what: &str| ProviderError::NotConfigured {
        provider,
        detail: format!("the connector has no {what}"),
    };
    if account.credentials.basic_user.is_some() {
        return account
            .config
            .site_url
            .clone()
            .ok_or_else(|| missing("site_url"));
    }
    let cloud_id = account
        .config
        .cloud_id
        .as_deref()
        .ok_or_else(|| missing("cloud_id"))?;
    Ok(join(api_url, &format!("/ex/{product}/{cloud_id}")))
}

/// The site's host, which scopes item ids: two sites may both have an issue 10001.
pub(crate) fn site_scope(account: &Account) -> String {
    account
        .config
        .site_url
        .as_deref()
        .and_then(|site| url::Url::parse(site).ok())
        .and_then(|url| {
            url.host_str().map(|host| match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            })
        })
        .or_else(|| account.config.cloud_id.clone())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
struct Resource {
    id: String,
    url: String,
}

/// The cloud site an OAuth grant reaches (`accessible-resources`): the one whose URL the
/// person gave, or the only one. An API token needs none.
pub(crate) async fn discover(
    http: &Http,
    api_url: &str,
    provider: Provider,
    account: &Account,
) -> Result<ConnectorConfig, ProviderError> {
    if account.credentials.basic_user.is_some() {
        return Ok(account.config.clone());
    }
    let request = account
        .credentials
        .authorize(
            http.client()
                .get(join(api_url, "/oauth/token/accessible-resources")),
        )
        .header("Accept", "application/json");
    let sites: Vec<Resource> = http
        .send(provider, Some(account.connector_id), request)
        .await?
        .json()?;
    let wanted = account
        .config
        .site_url
        .as_deref()
        .map(|s| s.trim_end_matches('/'));
    let site = match wanted {
        Some(wanted) => sites
            .iter()
            .find(|site| site.url.trim_end_matches('/') == wanted),
        None if sites.len() == 1 => sites.first(),
        None => None,
    };
    let Some(site) = site else {
        let urls: Vec<&str> = sites.iter().map(|site| site.url.as_str()).collect();
        return Err(ProviderError::NotConfigured {
            provider,
            detail: match wanted {
                Some(wanted) => format!("the grant does not reach {wanted}; it reaches {urls:?}"),
                None => format!(
                    "the grant reaches {} sites; set config.site_url to one of {urls:?}",
                    urls.len()
                ),
            },
        });
    };
    Ok(ConnectorConfig {
        site_url: Some(site.url.trim_end_matches('/').to_owned()),
        cloud_id: Some(site.id.clone()),
    })
}

/// A site URL as a person typed it, checked: an Atlassian Cloud site
/// (`https://<name>.atlassian.net`, nothing after the host). The worker sends the tenant's
/// API token there and shows the tenant what it answers, so no other host is accepted, lest a
/// tenant point the fleet at its internal network. `allow_local` (tests and `make up`'s
/// fakes) also admits http(s) on this machine, with a path.
pub fn check_site_url(site: &str, allow_local: bool) -> Result<String, String> {
    let example = "e.g. https://acme.atlassian.net";
    let url = url::Url::parse(site.trim())
        .map_err(|err| format!("`{site}` is not a URL ({err}); {example}"))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!(
            "`{site}` must be the site's address alone, {example}"
        ));
    }
    let host = url.host_str().unwrap_or("");
    let local = matches!(host, "127.0.0.1" | "localhost" | "[::1]")
        && matches!(url.scheme(), "http" | "https");
    let cloud = url.scheme() == "https"
        && host.ends_with(".atlassian.net")
        && url.port().is_none()
        && url.path() == "/";
    if !(cloud || (allow_local && local)) {
        return Err(format!(
            "`{site}` is not an Atlassian Cloud site (https://<name>.atlassian.net); {example}"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;

    fn account(basic: bool) -> Account {
        Account {
            connector_id: uuid::Uuid::nil(),
            credentials: Credentials::token("t".into(), basic.then(|| "a@b.c".to_owned())),
            config: ConnectorConfig {
                site_url: Some("https://acme.atlassian.net".into()),
                cloud_id: Some("c1".into()),
            },
        }
    }

    #[test]
    fn oauth_goes_through_the_gateway_and_tokens_to_the_site() {
        let api = "https://api.atlassian.com";
        assert_eq!(
            base(api, Provider::Jira, "jira", &account(false)).unwrap(),
            "https://api.atlassian.com/ex/jira/c1"
        );
        assert_eq!(
            base(api, Provider::Jira, "jira", &account(true)).unwrap(),
            "https://acme.atlassian.net"
        );
        assert_eq!(site_scope(&account(false)), "acme.atlassian.net");
    }

    #[test]
    fn site_urls_are_https_addresses() {
        assert_eq!(
            check_site_url("https://acme.atlassian.net/", false).unwrap(),
            "https://acme.atlassian.net"
        );
        for refused in [
            "http://acme.atlassian.net",
            "https://acme.atlassian.net/wiki",
            "https://acme.atlassian.net:8443",
            "https://acme.atlassian.net/?x=1",
            "https://atlassian.net.evil.test",
            "https://10.0.0.5",
            "http://127.0.0.1:9180/atlassian/site",
            "acme",
        ] {
            assert!(check_site_url(refused, false).is_err(), "{refused}");
        }
        assert_eq!(
            check_site_url("http://127.0.0.1:9180/atlassian/site", true).unwrap(),
            "http://127.0.0.1:9180/atlassian/site"
        );
        assert!(check_site_url("http://10.0.0.5/x", true).is_err());
    }
}
