// Shared by the viewer's pages: where the viewer is mounted, JSON fetches, and DOM building
// (text always goes in as textContent, never as HTML).
"use strict";

const slidemillBase = (() => {
  // pages live at <base>, <base>runs/<run>/ and <base>runs/<run>/slides/<slide>/
  const path = window.location.pathname;
  const at = path.lastIndexOf("/runs/");
  return at >= 0 ? path.slice(0, at + 1) : path.replace(/[^/]*$/, "");
})();

function pathParts() {
  const rest = window.location.pathname.slice(slidemillBase.length).split("/").filter(Boolean);
  return { run: rest[1] ? decodeURIComponent(rest[1]) : null,
           slide: rest[3] ? decodeURIComponent(rest[3]) : null };
}

function apiUrl(...parts) {
  return slidemillBase + "api/" + parts.map(encodeURIComponent).join("/");
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${detail}`);
  }
  return response.json();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function showError(err) {
  const status = document.getElementById("status");
  if (status) { status.textContent = String(err.message || err); status.className = "error"; }
}
