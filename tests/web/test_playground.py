"""The offline GraphiQL playground must never make the browser leave the machine."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from web.playground import DEFAULT_QUERY, STATIC_DIR, render_playground

ASSET_DIR = STATIC_DIR / "graphiql"
EXPECTED_ASSETS = {
    "graphiql.min.css",
    "graphiql.min.js",
    "graphql-ws.min.js",
    "react.production.min.js",
    "react-dom.production.min.js",
}
LICENSES = {
    "LICENSE.graphiql.txt",
    "LICENSE.graphql-ws.md",
    "LICENSE.react.txt",
    "LICENSE.react-dom.txt",
}
CDN_HOSTS = ("unpkg", "jsdelivr", "esm.sh", "cdnjs", "googleapis", "gstatic", "skypack")
_CDN_URL = re.compile(
    r"(?:https?:)?//(?:[\w-]+\.)*(?:unpkg\.com|jsdelivr\.net|esm\.sh|cdnjs\.cloudflare\.com"
    r"|fonts\.googleapis\.com|fonts\.gstatic\.com|cdn\.skypack\.dev)",
    re.IGNORECASE,
)
_CSS_URL = re.compile(r"url\(\s*(['\"]?)(.*?)\1\s*\)", re.IGNORECASE | re.DOTALL)


class _RefCollector(HTMLParser):
    """Collects every src/href attribute value of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value is not None:
                self.refs.append((tag, name, value))


def page_refs(page: str) -> list[tuple[str, str, str]]:
    collector = _RefCollector()
    collector.feed(page)
    collector.close()
    return collector.refs


def external_problems(page: str) -> list[str]:
    """Everything in an HTML page that could make the browser contact another host."""
    problems = [m for m in ("http://", "https://") if m in page]
    problems += [host for host in CDN_HOSTS if host in page.lower()]
    for tag, attr, value in page_refs(page):
        if value.startswith("data:"):
            continue
        if not value.startswith("/") or value.startswith("//") or ":" in value.split("?")[0]:
            problems.append(f"<{tag} {attr}={value!r}>")
    return problems


def css_problems(css: str) -> list[str]:
    """External @import / url() / source maps in a stylesheet (only data: URLs allowed)."""
    problems = [f"@import {m}" for m in re.findall(r"@import[^;]*", css, re.IGNORECASE)]
    problems += [f"url({u[:60]})" for _, u in _CSS_URL.findall(css) if not u.startswith("data:")]
    problems += ["sourceMappingURL"] if "sourceMappingURL" in css else []
    problems += _CDN_URL.findall(css)
    return problems


def js_problems(js: str) -> list[str]:
    """CDN / font URLs, CSS @import statements or source-map comments inside a script."""
    problems = _CDN_URL.findall(js)
    problems += re.findall(r"@import\s+(?:url\()?['\"]?(?:https?:)?//[^'\")\s]+", js)
    problems += ["sourceMappingURL"] if "sourceMappingURL" in js else []
    return problems


# --- the checks themselves must be able to fail ---------------------------------------


def test_checks_flag_a_cdn_page_and_stylesheet() -> None:
    cdn_page = (
        '<link rel="stylesheet" href="//unpkg.com/graphiql/graphiql.min.css">'
        '<script src="https://cdn.jsdelivr.net/npm/react.js"></script>'
        '<script src="/static/graphiql/ok.js"></script>'
    )
    assert len(external_problems(cdn_page)) >= 4
    bad_css = (
        "@import url('https://fonts.googleapis.com/css2?family=Roboto');"
        "@font-face{src:url(https://fonts.gstatic.com/x.woff2)}"
        "a{background:url(data:image/png;base64,AAAA)}"
        "/*# sourceMappingURL=graphiql.min.css.map*/"
    )
    assert len(css_problems(bad_css)) >= 4
    assert js_problems('x="https://esm.sh/graphql-ws";\n//# sourceMappingURL=a.js.map')
    assert external_problems('<script src="/static/graphiql/a.js"></script>') == []
    assert css_problems("a{src:url(data:font/woff2;base64,AAAA)}") == []


# --- the rendered page -------------------------------------------------------------------


def test_static_dir_is_web_static() -> None:
    assert Path(__file__).resolve().parents[2] / "web" / "static" == STATIC_DIR
    assert STATIC_DIR.is_dir()


@pytest.mark.parametrize("prefix", ["/static/graphiql", "/assets/gql/"])
def test_page_references_only_local_urls(prefix: str) -> None:
    page = render_playground(static_prefix=prefix)
    assert external_problems(page) == []
    refs = [value for _, _, value in page_refs(page) if not value.startswith("data:")]
    assert refs, "the page must load its assets"
    assert all(value.startswith(prefix.rstrip("/") + "/") for value in refs), refs


def test_every_referenced_asset_is_vendored_and_served() -> None:
    page = render_playground()
    prefix = "/static/graphiql/"
    names = {
        value.removeprefix(prefix) for _, _, value in page_refs(page) if value.startswith(prefix)
    }
    assert names == EXPECTED_ASSETS
    for name in names:
        assert (ASSET_DIR / name).is_file(), name

    app = Starlette(routes=[Mount("/static", StaticFiles(directory=STATIC_DIR))])
    with TestClient(app) as client:
        for name in sorted(names):
            response = client.get(prefix + name)
            assert response.status_code == 200, name
            assert len(response.content) > 1000, name


def test_scripts_load_in_dependency_order() -> None:
    page = render_playground()
    scripts = [v.rsplit("/", 1)[-1] for tag, _, v in page_refs(page) if tag == "script"]
    assert scripts == [
        "react.production.min.js",
        "react-dom.production.min.js",
        "graphql-ws.min.js",
        "graphiql.min.js",
    ]
    # The inline bootstrap comes after the libraries it uses.
    assert page.rindex('src="/static/graphiql/graphiql.min.js"') < page.index("ReactDOM.createRoot")


def test_page_wires_subscriptions_auth_and_default_query() -> None:
    page = render_playground(graphql_path="/api/graphql")
    assert '"graphqlPath": "/api/graphql"' in page
    assert '"ws://"' in page and '"wss://"' in page and "window.location.host" in page
    assert "graphqlWs.createClient(" in page
    assert "connectionParams: function ()" in page
    assert "{ authorization: value }" in page
    assert '"tokenKey": "kianax.token"' in page
    assert "GraphiQL.createFetcher(" in page and "wsClient:" in page
    assert DEFAULT_QUERY == "{ marketStatus { isOpen nextOpen nextClose } }"
    assert f'"defaultQuery": "{DEFAULT_QUERY}"' in page


def test_paths_are_escaped_and_must_be_local() -> None:
    page = render_playground(graphql_path="/g</script><script>alert(1)</script>")
    assert "<script>alert(1)" not in page
    assert page.count("</script>") == page.count("<script")
    for bad in ("https://evil.example/graphql", "//evil.example/graphql", "graphql", "/a b"):
        with pytest.raises(ValueError):
            render_playground(graphql_path=bad)
        with pytest.raises(ValueError):
            render_playground(static_prefix=bad)


# --- the vendored files ------------------------------------------------------------------


def test_vendored_files_and_licenses_present() -> None:
    present = {p.name for p in ASSET_DIR.iterdir() if p.is_file()}
    assert present >= EXPECTED_ASSETS | LICENSES
    for name in LICENSES:
        assert "MIT License" in (ASSET_DIR / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_ASSETS if n.endswith(".css")))
def test_vendored_css_has_no_external_urls(name: str) -> None:
    css = (ASSET_DIR / name).read_text(encoding="utf-8")
    assert "@font-face" in css  # fonts are present, and (below) all inlined as data: URIs
    assert css_problems(css) == []


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED_ASSETS if n.endswith(".js")))
def test_vendored_js_has_no_external_urls(name: str) -> None:
    js = (ASSET_DIR / name).read_text(encoding="utf-8")
    assert js_problems(js) == []
