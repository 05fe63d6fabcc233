"""Offline GraphiQL playground for the Kianax GraphQL API.

Strawberry's built-in GraphiQL page pulls React/GraphiQL from unpkg, so it is blank
without internet.  This page loads every script and stylesheet from Kianax itself:
the assets below are vendored (unmodified npm tarball files, except that the trailing
``sourceMappingURL`` comments were removed because the ``.map`` files are not shipped)
in ``web/static/graphiql/`` next to their LICENSE files:

* graphiql 3.8.3    -> graphiql.min.js, graphiql.min.css (fonts inlined as data: URIs)
* react 18.3.1      -> react.production.min.js (umd/)
* react-dom 18.3.1  -> react-dom.production.min.js (umd/)
* graphql-ws 6.4.2  -> graphql-ws.min.js (umd/, exposes ``window.graphqlWs``)

Subscriptions run over WebSocket with the ``graphql-transport-ws`` protocol.  The page
sends ``{"authorization": "Bearer <token>"}`` in ``connection_init``; the token comes from
the ``Authorization`` header typed in GraphiQL's headers editor, falling back to the token
saved in ``localStorage["kianax.token"]`` (the "Access token" field at the top of the page,
which is also added as an ``Authorization`` header to HTTP requests that lack one).
"""

from __future__ import annotations

import html
import json
import pathlib
from string import Template

__all__ = [
    "DEFAULT_QUERY",
    "STATIC_DIR",
    "TOKEN_STORAGE_KEY",
    "render_playground",
]

STATIC_DIR: pathlib.Path = pathlib.Path(__file__).resolve().parent / "static"
"""Directory served at ``/static`` (the playground assets live in ``graphiql/`` below it)."""

DEFAULT_QUERY = "{ marketStatus { isOpen nextOpen nextClose } }"
TOKEN_STORAGE_KEY = "kianax.token"  # noqa: S105 - a localStorage key, not a secret

_PAGE = Template(
    """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; \
script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; font-src 'self' data:; connect-src 'self' ws: wss:; \
object-src 'none'; base-uri 'none'; form-action 'none'">
<title>Kianax GraphQL playground</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="$static/graphiql.min.css">
<style>
  html, body { height: 100%; margin: 0; overflow: hidden; }
  body { display: flex; flex-direction: column;
         font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  #kianax-bar { display: flex; margin: 0; align-items: center; gap: 8px; padding: 6px 12px;
                font-size: 13px; border-bottom: 1px solid #d0d4db; background: #f6f7f9; }
  #kianax-bar strong { margin-right: 8px; }
  #kianax-token { flex: 0 1 420px; min-width: 120px; padding: 3px 6px; font: inherit; }
  #kianax-token-status { color: #555; }
  #graphiql { flex: 1; min-height: 0; }
</style>
</head>
<body>
<form id="kianax-bar" autocomplete="off">
  <strong>Kianax</strong>
  <label for="kianax-token">Access token</label>
  <input id="kianax-token" type="password" autocomplete="off" spellcheck="false"
         placeholder="paste an access token (sent as Authorization: Bearer ...)">
  <button id="kianax-token-save" type="submit">Save</button>
  <button id="kianax-token-clear" type="button">Clear</button>
  <span id="kianax-token-status"></span>
</form>
<div id="graphiql">Loading...</div>
<script src="$static/react.production.min.js"></script>
<script src="$static/react-dom.production.min.js"></script>
<script src="$static/graphql-ws.min.js"></script>
<script src="$static/graphiql.min.js"></script>
<script>
(function () {
  "use strict";
  var CONFIG = $config;
  var httpUrl = new URL(CONFIG.graphqlPath, window.location.href).toString();
  var wsUrl = (window.location.protocol === "https:" ? "wss://" : "ws://") +
    window.location.host + CONFIG.graphqlPath;

  function storedToken() {
    try { return window.localStorage.getItem(CONFIG.tokenKey) || ""; } catch (e) { return ""; }
  }
  function asBearer(value) {
    value = String(value || "").trim();
    if (!value) { return null; }
    return /^bearer\\s/i.test(value) ? value : "Bearer " + value;
  }
  function authorizationIn(headers) {
    if (!headers || typeof headers !== "object") { return null; }
    for (var key in headers) {
      if (Object.prototype.hasOwnProperty.call(headers, key) &&
          key.toLowerCase() === "authorization" && headers[key]) {
        return String(headers[key]);
      }
    }
    return null;
  }

  // Latest parsed content of GraphiQL's headers editor.
  var editorHeaders = {};
  function rememberEditorHeaders(text) {
    if (!text || !String(text).trim()) { editorHeaders = {}; return; }
    try {
      var parsed = JSON.parse(text);
      if (parsed && typeof parsed === "object") { editorHeaders = parsed; }
    } catch (e) { /* keep the last valid headers while the user is typing */ }
  }
  function currentAuthorization() {
    return asBearer(authorizationIn(editorHeaders)) || asBearer(storedToken());
  }

  // graphql-ws client (graphql-transport-ws).  A new client is created when the
  // Authorization value changes so the next subscription re-sends connection_init.
  var wsClient = null;
  var wsClientAuth = null;
  function currentWsClient() {
    var auth = currentAuthorization();
    if (wsClient && auth !== wsClientAuth) { wsClient.dispose(); wsClient = null; }
    if (!wsClient) {
      wsClientAuth = auth;
      wsClient = graphqlWs.createClient({
        url: wsUrl,
        connectionParams: function () {
          var value = currentAuthorization();
          return value ? { authorization: value } : {};
        }
      });
    }
    return wsClient;
  }

  var baseFetcher = GraphiQL.createFetcher({
    url: httpUrl,
    wsClient: {
      subscribe: function (payload, sink) { return currentWsClient().subscribe(payload, sink); }
    }
  });

  function fetcher(graphQLParams, opts) {
    var options = Object.assign({}, opts || {});
    // GraphiQL refreshes its documentAST 100 ms after an edit; parse the query being
    // sent so a subscription run right after editing still goes over the WebSocket.
    if (graphQLParams && typeof graphQLParams.query === "string") {
      try { options.documentAST = GraphiQL.GraphQL.parse(graphQLParams.query); } catch (e) { }
    }
    var headers = Object.assign({}, options.headers || {});
    if (options.headers) { editorHeaders = options.headers; }
    if (!authorizationIn(headers)) {
      var auth = asBearer(storedToken());
      if (auth) { headers.Authorization = auth; }
    }
    options.headers = headers;
    return baseFetcher(graphQLParams, options);
  }

  // Access-token bar.
  var input = document.getElementById("kianax-token");
  var status = document.getElementById("kianax-token-status");
  function showStatus() {
    status.textContent = storedToken() ? "token saved in this browser" : "no token saved";
  }
  input.value = storedToken();
  showStatus();
  document.getElementById("kianax-bar").addEventListener("submit", function (event) {
    event.preventDefault();
    var value = input.value.trim().replace(/^bearer\\s+/i, "");
    input.value = value;
    try {
      if (value) { window.localStorage.setItem(CONFIG.tokenKey, value); }
      else { window.localStorage.removeItem(CONFIG.tokenKey); }
    } catch (e) { /* storage disabled */ }
    showStatus();
  });
  document.getElementById("kianax-token-clear").addEventListener("click", function () {
    input.value = "";
    try { window.localStorage.removeItem(CONFIG.tokenKey); } catch (e) { /* ignore */ }
    showStatus();
  });

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, {
    fetcher: fetcher,
    defaultQuery: CONFIG.defaultQuery,
    isHeadersEditorEnabled: true,
    shouldPersistHeaders: false,
    defaultEditorToolsVisibility: true,
    onEditHeaders: rememberEditorHeaders
  }));
})();
</script>
</body>
</html>
"""
)


def _check_local_path(name: str, value: str) -> str:
    """Accept only same-origin absolute paths ("/x"), never "//host" or "scheme:"."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        raise ValueError(f"{name} must be an absolute path on this server, got {value!r}")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in value):
        raise ValueError(f"{name} must not contain whitespace or control characters")
    return value


def _script_json(value: object) -> str:
    """JSON that is safe to embed inside an inline <script> element."""
    return (
        json.dumps(value)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def render_playground(
    graphql_path: str = "/graphql", static_prefix: str = "/static/graphiql"
) -> str:
    """Return the full HTML of the offline GraphiQL playground.

    ``graphql_path`` is the HTTP and WebSocket endpoint path; the WebSocket URL is built
    in the browser from ``location`` (ws:// or wss:// + host + graphql_path).
    ``static_prefix`` is the URL path where ``STATIC_DIR / "graphiql"`` is served.
    Both must be absolute paths on the same origin (``ValueError`` otherwise).
    """
    graphql_path = _check_local_path("graphql_path", graphql_path)
    static_prefix = _check_local_path("static_prefix", static_prefix).rstrip("/")
    config = {
        "graphqlPath": graphql_path,
        "tokenKey": TOKEN_STORAGE_KEY,
        "defaultQuery": DEFAULT_QUERY,
    }
    return _PAGE.substitute(
        static=html.escape(static_prefix, quote=True),
        config=_script_json(config),
    )
