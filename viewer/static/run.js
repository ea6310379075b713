// The run page: one row per slide, sortable by any column, filtered by text and status.
"use strict";
(async () => {
  const { run } = pathParts();
  let data;
  try { data = await getJSON(apiUrl("runs", run)); } catch (err) { showError(err); return; }
  document.title = `slidemill: ${data.key}`;
  document.getElementById("title").textContent = data.key;

  const columns = [
    { key: "thumb", title: "", sortable: false },
    { key: "slide_id", title: "Slide" },
    { key: "status", title: "Status" },
    { key: "label", title: "Label" },
    ...data.class_names.map((c) => ({ key: `p:${c}`, title: `P(${c})`, numeric: true })),
    { key: "flags", title: "Flags" },
    { key: "n_tiles", title: "Tiles", numeric: true },
    { key: "error", title: "Error" },
  ];
  const value = (row, key) => key.startsWith("p:") ? row.probabilities[key.slice(2)]
    : key === "flags" ? row.flags.join(";") : row[key];

  const head = document.querySelector("#slides thead tr");
  let sortKey = "slide_id", sortDir = "asc";
  for (const col of columns) {
    const th = el("th", { text: col.title, "data-key": col.key });
    if (col.sortable !== false) {
      th.addEventListener("click", () => {
        sortDir = sortKey === col.key && sortDir === "asc" ? "desc" : "asc";
        sortKey = col.key;
        render();
      });
    }
    head.append(th);
  }
  const statusFilter = document.getElementById("status-filter");
  for (const s of [...new Set(data.slides.map((r) => r.status))].sort()) {
    statusFilter.append(el("option", { value: s, text: s }));
  }
  const filter = document.getElementById("filter");
  filter.addEventListener("input", render);
  statusFilter.addEventListener("change", render);

  function cell(row, col) {
    if (col.key === "thumb") {
      return el("td", {}, row.viewable ? el("img", { class: "thumb", loading: "lazy", alt: "",
        src: apiUrl("runs", run, "slides", row.slide_id, "preview.jpg") }) : "");
    }
    if (col.key === "flags") {
      return el("td", {}, ...row.flags.map((f) => el("span", { class: "flag", text: f })));
    }
    const v = value(row, col.key);
    if (col.numeric) return el("td", { class: "num", text: v == null ? "" : (col.key === "n_tiles" ? String(v) : v.toFixed(3)) });
    return el("td", { class: col.key === "error" && v ? "error" : "", text: v == null ? "" : String(v) });
  }

  function render() {
    const text = filter.value.trim().toLowerCase();
    const status = statusFilter.value;
    const rows = data.slides.filter((r) => (!status || r.status === status) && (!text ||
      [r.slide_id, r.status, r.label || "", r.flags.join(" "), r.error || ""].join(" ").toLowerCase().includes(text)));
    const col = columns.find((c) => c.key === sortKey);
    rows.sort((a, b) => {
      const x = value(a, sortKey), y = value(b, sortKey);
      const order = x == null ? 1 : y == null ? -1 : col.numeric ? x - y : String(x).localeCompare(String(y));
      return sortDir === "asc" ? order : -order;
    });
    for (const th of head.children) th.dataset.dir = th.dataset.key === sortKey ? sortDir : "";
    const body = document.querySelector("#slides tbody");
    body.replaceChildren(...rows.map((r) => {
      const tr = el("tr", { class: "slide", "data-slide": r.slide_id }, ...columns.map((c) => cell(r, c)));
      if (r.viewable) tr.addEventListener("click", () => {
        window.location.href = `slides/${encodeURIComponent(r.slide_id)}/`;
      });
      return tr;
    }));
    document.getElementById("count").textContent = `${rows.length} of ${data.slides.length} slides`;
  }
  render();
  document.getElementById("status").textContent = "";
})();
