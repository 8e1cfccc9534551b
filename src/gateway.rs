//! The compiled, immutable runtime view of one config: routing table, key check,
//! group permissions, connections and handlers, all built once at startup (and on
//! reload) so that the request path does no work that could be done in advance.
//! The server holds it behind an `ArcSwap` and swaps it whole.

use std::sync::Arc;

use crate::auth::{build_key_check, KeyCheck};
use crate::client_addr::TrustedProxies;
use crate::config::{Config, ConfigError, DEFAULT_ENCRYPTION_KEY};
use crate::error::ApiError;
use crate::extensions::ExtensionResolver;
use crate::handlers::{build_handlers, RequestHandler};
use crate::logging::{build_loggers, LogDispatcher, QueueLimits};
use crate::providers::{build_connections, Connection};
use crate::routing::Router;
use crate::secrets::Redactor;

/// Which connections a group may use.
#[derive(Debug, Clone)]
pub enum GroupAccess {
    All,
    Only(hashbrown::HashSet<String>),
}

impl GroupAccess {
    pub fn allows(&self, connection: &str) -> bool {
        match self {
            GroupAccess::All => true,
            GroupAccess::Only(names) => names.contains(connection),
        }
    }
}

pub struct Gateway {
    pub config: Config,
    pub trusted_proxies: TrustedProxies,
    /// The queue to the configured loggers; `None` when there are none.
    pub log_dispatcher: Option<Arc<LogDispatcher>>,
    pub router: Router,
    pub key_check: Arc<dyn KeyCheck>,
    /// (foldhash, as the maps below: each request looks up its group and its
    /// connection by name.)
    pub groups: hashbrown::HashMap<String, GroupAccess>,
    pub connections: hashbrown::HashMap<String, Connection>,
    pub handlers: Vec<Arc<dyn RequestHandler>>,
    /// A handler reads the client's header name spellings: the server records them.
    pub client_spellings: bool,
    /// Removes configured secrets from errors before they are answered or logged.
    pub redactor: Arc<Redactor>,
    /// The key check is the default one (the config's keys), which also accepts
    /// managed keys; a key check of the user's own replaces both.
    pub default_key_check: bool,
    /// The managed keys (`usage::keys`, with `[database]`): set by the server's
    /// state, which keeps them across reloads.
    pub managed_keys: Option<Arc<crate::usage::keys::ManagedKeys>>,
    /// Connection name → the model ids its upstream offers (`expand_wildcards`).
    model_lists: moka::future::Cache<String, Arc<Vec<String>>>,
    /// Which connections take a chat request as the client wrote it
    /// (`Provider::takes_raw_chat`, `api::raw_chat`).
    pub raw_chat: RawReach,
    /// Which take a Messages request as written (Anthropic's, `api::messages::raw`).
    pub raw_messages: RawReach,
    /// Which take the chat request written from a Messages request
    /// (`api::messages::chat_body`): those that take a chat request as written and
    /// do not speak the Messages API themselves.
    pub raw_messages_translated: RawReach,
    /// Which take a Responses request as written (`Provider::speaks_responses`,
    /// `api::responses::raw`).
    pub raw_responses: RawReach,
    /// Which take the chat request written from a Responses request
    /// (`api::responses::chat_body`).
    pub raw_responses_translated: RawReach,
}

/// Which of a gateway's connections take a door's request as the client wrote it:
/// the door tries its tree-free path for all, none, or (some) those its model is
/// routed to, so that a request for a translating connection is not read twice
/// (`api::core::may_take_raw`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawReach {
    Every,
    No,
    Some,
}

impl RawReach {
    /// The reach of the connections that `takes`.
    fn of<'c>(
        connections: impl ExactSizeIterator<Item = &'c Connection>,
        takes: impl Fn(&Connection) -> bool,
    ) -> RawReach {
        let all = connections.len();
        match connections.filter(|c| takes(c)).count() {
            takers if takers == all => RawReach::Every,
            0 => RawReach::No,
            _ => RawReach::Some,
        }
    }
}

impl Gateway {
    /// Build everything the request path needs; any config problem stops here.
    pub fn build(
        config: Config,
        client: &crate::upstream::UpstreamClient,
        resolver: &dyn ExtensionResolver,
    ) -> Result<Gateway, ConfigError> {
        let router = Router::new(
            config
                .settings
                .routing
                .iter()
                .map(|(pattern, target)| (pattern.as_str(), target.as_str())),
        )
        .map_err(|(pattern, problem)| {
            ConfigError::new(&config.path, format!("routing.{pattern:?}"), problem)
        })?;
        // Components first, as in the reference: connections, handlers and loggers
        // written in Python may look them up while they are built.
        for spec in config.components.values() {
            resolver.component(spec, &config)?;
        }
        let key_check = build_key_check(&config, client, resolver)?;
        let default_key_check = config.api_key_check.as_ref().is_none_or(|spec| {
            matches!(
                crate::extensions::builtin_name(&spec.target),
                Some(crate::extensions::Builtin::CheckApiKeyInConfig)
            )
        });
        let trusted_proxies =
            TrustedProxies::parse(&config.settings.trusted_proxies).map_err(|entry| {
                ConfigError::new(
                    &config.path,
                    "trusted_proxies",
                    format!("'{entry}' is not an IP address or network (e.g. 10.0.0.0/8)"),
                )
            })?;
        let groups = config
            .settings
            .groups
            .iter()
            .map(|(name, group)| {
                let access = match group.allowed_connections.names() {
                    None => GroupAccess::All,
                    Some(names) => GroupAccess::Only(names.into_iter().collect()),
                };
                (name.clone(), access)
            })
            .collect();
        let connections = build_connections(&config, client, resolver)?;
        let handlers = build_handlers(&config, resolver)?;
        let client_spellings = crate::handlers::uses_client_spellings(&config);
        // Last: it starts the logging task, which nothing else may fail after.
        let log_dispatcher = LogDispatcher::start(
            build_loggers(&config, resolver)?,
            QueueLimits::from_config(&config.settings.log_queue),
        );

        if config.settings.encryption_key == DEFAULT_ENCRYPTION_KEY {
            tracing::warn!(
                "{}: encryption_key is the public default; set your own so that api_key_id values cannot be reversed by guessing keys",
                config.path.display()
            );
        }
        let model_lists = moka::future::Cache::builder()
            .max_capacity(1024)
            .time_to_live(crate::config::cache_ttl(
                config.settings.model_listing_cache_seconds,
            ))
            .build();
        let redactor = Arc::new(Redactor::from_config(&config));
        let gateway = Gateway {
            redactor,
            model_lists,
            config,
            trusted_proxies,
            log_dispatcher,
            router,
            key_check,
            default_key_check,
            managed_keys: None,
            groups,
            raw_chat: RawReach::of(connections.values(), |c| c.provider.takes_raw_chat()),
            raw_messages: RawReach::of(connections.values(), |c| c.provider.anthropic().is_some()),
            raw_messages_translated: RawReach::of(
                connections.values(),
                crate::api::messages::takes_written_chat,
            ),
            raw_responses: RawReach::of(connections.values(), |c| c.provider.speaks_responses()),
            raw_responses_translated: RawReach::of(
                connections.values(),
                crate::api::responses::takes_written_chat,
            ),
            connections: connections.into_iter().collect(),
            handlers,
            client_spellings,
        };
        resolver.gateway_built(&gateway);
        Ok(gateway)
    }

    /// The model ids of a connection's upstream, cached for
    /// `model_listing_cache_seconds`; concurrent askers share one upstream call and
    /// failures are not cached.
    pub async fn models_of(&self, connection: &str) -> Result<Arc<Vec<String>>, ApiError> {
        let provider = self
            .connections
            .get(connection)
            .map(|c| c.provider.clone())
            .ok_or_else(|| ApiError::internal(format!("unknown connection '{connection}'")))?;
        self.model_lists
            .try_get_with(connection.to_owned(), async move {
                provider.list_models().await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<ApiError>| (*e).clone())
    }

    /// Write out every queued log entry (call once the server stopped serving).
    pub async fn flush_logs(&self) {
        if let Some(dispatcher) = &self.log_dispatcher {
            dispatcher.close().await;
        }
    }

    /// Whether `group` may use `connection`. Unknown groups (a key check returned a
    /// group that is not configured) may use nothing.
    pub fn group_allows(&self, group: &str, connection: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|access| access.allows(connection))
    }
}
