"use strict";
(async () => {
  try {
    const { runs } = await getJSON(apiUrl("runs"));
    const list = document.getElementById("runs");
    for (const run of runs) {
      list.append(el("li", {}, el("a", { href: `runs/${encodeURIComponent(run.key)}/`, text: run.key }),
                     el("span", { class: "muted", text: `  ${run.title}` })));
    }
    document.getElementById("status").textContent = runs.length ? "" : "No runs.";
  } catch (err) { showError(err); }
})();
