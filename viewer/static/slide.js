// The slide page: the slide as a DeepZoom layer, the heatmap as a second tiled layer over it
// (same level-0 size, so the two lie on each other at every zoom), the tile under the pointer,
// and galleries of the top-k tiles that fly the view to a tile and outline it. An explained
// slide (`slidemill explain`) has an "explanation" layer too: Shapley shares, signed, drawn with
// a diverging colormap, and the hover adds a tile's share, region and feature-level reasons.
"use strict";
(async () => {
  const { run, slide } = pathParts();
  const api = (...rest) => apiUrl("runs", run, "slides", slide, ...rest);
  let info;
  try { info = await getJSON(api()); } catch (err) { document.getElementById("title").textContent = String(err.message); return; }

  document.title = `slidemill: ${info.slide_id}`;
  document.getElementById("title").textContent = info.slide_id;
  document.getElementById("back").textContent = `run ${info.run}`;
  const probs = Object.entries(info.probabilities).map(([c, p]) => `P(${c}) ${p.toFixed(3)}`).join(", ");
  document.getElementById("diagnosis").textContent = `${info.label ?? ""}  ${probs}`;
  document.getElementById("flags").replaceChildren(...info.flags.map((f) =>
    el("div", {}, el("span", { class: "flag", text: f.code }), el("span", { text: ` ${f.reason}` }))));

  const state = { layer: info.heatmap.default, cmap: info.heatmap.colormaps[0], opacity: 0.6, threshold: 0 };
  const explained = info.explanation;
  const isExplanation = (name) => Boolean(explained) && name === explained.layer;
  const layerText = (name) => name === "attention" ? "attention"
    : isExplanation(name) ? `explanation: Shapley, P(${explained.target})` : `P(${name})`;
  const layerSelect = document.getElementById("layer");
  for (const name of info.heatmap.layers) {
    layerSelect.append(el("option", { value: name, text: layerText(name) }));
  }
  layerSelect.value = state.layer;
  const cmapSelect = document.getElementById("cmap");
  for (const name of info.heatmap.colormaps) cmapSelect.append(el("option", { value: name, text: name }));

  const viewer = OpenSeadragon({
    element: document.getElementById("osd"),
    prefixUrl: slidemillBase + "openseadragon/images/",
    tileSources: api("slide.dzi"),
    showNavigator: true,
    maxZoomPixelRatio: 2,
    crossOriginPolicy: false,
  });
  let slideImage = null, heatImage = null, outline = null, replacing = 0;

  function heatSource() {
    const { width, height } = info;
    const query = `?cmap=${encodeURIComponent(state.cmap)}&threshold=${state.threshold}`;
    return {
      width, height, tileSize: info.heatmap.tile_size, tileOverlap: 0,
      minLevel: 0, maxLevel: info.heatmap.max_level,
      getTileUrl: (level, x, y) => api("heatmap", state.layer, String(level), `${x}_${y}.png`) + query,
    };
  }

  function addHeatmap() {
    // the new layer replaces the old once it is in the world, so nothing flickers
    const old = heatImage;
    replacing += 1;
    viewer.addTiledImage({
      tileSource: heatSource(), x: 0, y: 0, width: 1, opacity: state.opacity,
      success: (event) => {
        heatImage = event.item;
        if (old) viewer.world.removeItem(old);
        replacing -= 1;
      },
      error: () => { replacing -= 1; },
    });
  }

  viewer.addHandler("open", () => {
    slideImage = viewer.world.getItemAt(0);
    addHeatmap();
  });

  async function drawColorbar() {
    const { colors } = await getJSON(apiUrl("colormaps", state.cmap));
    const canvas = document.getElementById("colorbar");
    const ctx = canvas.getContext("2d");
    colors.forEach(([r, g, b], i) => {
      ctx.fillStyle = i / 255 < state.threshold ? "#ffffff" : `rgb(${r},${g},${b})`;
      ctx.fillRect(i, 0, 1, canvas.height);
    });
    const signed = isExplanation(state.layer);
    const m = signed ? explained.max_abs : 1;
    document.getElementById("bar-low").textContent = signed ? (-m).toPrecision(2) : "0";
    document.getElementById("bar-high").textContent = signed ? `+${m.toPrecision(2)}` : "1";
    document.getElementById("bar-name").textContent = state.layer === "attention"
      ? "attention (÷ slide max)" : signed ? "Shapley share, log-odds" : `P(${state.layer})`;
  }

  if (explained) {
    const f = explained.faithfulness || {};
    const auc = (k, which) => (f[k] && f[k][which] != null) ? f[k][which].toFixed(3) : "–";
    const kinds = [["attention", "attention"], ["tile_score", "tile score"], ["shapley", "Shapley"]];
    document.getElementById("explain-summary").replaceChildren(
      el("div", { text: `Explained P(${explained.target}): ${explained.n_players} regions, ` +
        `${explained.exact ? "exact" : `${explained.permutations} orders`}, seed ${explained.seed}` }),
      ...kinds.map(([k, label]) => el("div", { "data-explanation": k,
        text: `${label}: deletion AUC ${auc(k, "deletion_auc")}, insertion AUC ${auc(k, "insertion_auc")}` })));
  }

  const opacity = document.getElementById("opacity");
  const threshold = document.getElementById("threshold");
  const showValues = () => {
    document.getElementById("opacity-value").textContent = Number(opacity.value).toFixed(2);
    document.getElementById("threshold-value").textContent = Number(threshold.value).toFixed(2);
  };
  opacity.addEventListener("input", () => {
    state.opacity = Number(opacity.value);
    if (heatImage) heatImage.setOpacity(state.opacity);
    showValues();
  });
  threshold.addEventListener("change", () => {
    state.threshold = Number(threshold.value);
    showValues(); addHeatmap(); drawColorbar();
  });
  threshold.addEventListener("input", showValues);
  let cmapBefore = null;
  layerSelect.addEventListener("change", () => {
    state.layer = layerSelect.value;
    // signed values want a diverging colormap; the one chosen before comes back after
    if (isExplanation(state.layer) && cmapBefore === null) {
      cmapBefore = state.cmap;
      state.cmap = explained.colormap;
    } else if (!isExplanation(state.layer) && cmapBefore !== null) {
      state.cmap = cmapBefore;
      cmapBefore = null;
    }
    cmapSelect.value = state.cmap;
    addHeatmap(); drawColorbar();
  });
  cmapSelect.addEventListener("change", () => { state.cmap = cmapSelect.value; addHeatmap(); drawColorbar(); });
  showValues();
  drawColorbar();

  // the tile under the pointer, asked for at most every 120 ms
  const hover = document.getElementById("hover");
  let pending = null, lastAsked = 0;
  new OpenSeadragon.MouseTracker({
    element: viewer.canvas,
    moveHandler: (event) => {
      if (!slideImage) return;
      const point = slideImage.viewerElementToImageCoordinates(event.position);
      clearTimeout(pending);
      pending = setTimeout(async () => {
        const asked = ++lastAsked;
        const { tile } = await getJSON(api("tile-at") + `?x=${point.x}&y=${point.y}`);
        if (asked !== lastAsked) return;
        hover.replaceChildren(tile ? describeTile(tile) : el("span", { text: "No tile here." }));
      }, 120);
    },
  });

  function describeTile(tile) {
    const lines = Object.entries(tile.scores).map(([c, p]) => el("div", { text: `P(${c}) ${p.toFixed(3)}` }));
    const why = [];
    const e = tile.explanation;
    if (e) {
      why.push(el("div", { "data-explanation": "shapley", text: e.shapley === null
        ? "Shapley: not in the bag" : `Shapley ${e.shapley >= 0 ? "+" : ""}${e.shapley.toFixed(3)} (region ${e.region})` }));
      for (const r of e.reasons) {
        why.push(el("div", { class: "reason", "data-feature": r.feature,
          text: `${r.feature} ${r.value >= 0 ? "+" : ""}${r.value.toFixed(3)}` }));
      }
    }
    return el("div", { "data-tile": String(tile.index) },
      el("div", { text: `tile ${tile.index} at (${tile.x}, ${tile.y})` }), ...lines,
      el("div", { text: `attention ${tile.attention.toExponential(2)}` }), ...why);
  }

  function flyTo(tile, button) {
    const rect = slideImage.imageToViewportRectangle(tile.x, tile.y, tile.size, tile.size);
    const margin = rect.width * 1.5;
    viewer.viewport.fitBounds(new OpenSeadragon.Rect(rect.x - margin, rect.y - margin,
      rect.width + 2 * margin, rect.height + 2 * margin));
    if (outline) viewer.removeOverlay(outline);
    outline = el("div", { class: "outline", "data-tile": String(tile.index) });
    viewer.addOverlay({ element: outline, location: rect });
    document.querySelectorAll(".gallery button.chosen").forEach((b) => b.classList.remove("chosen"));
    button.classList.add("chosen");
    hover.replaceChildren(describeTile(tile));
  }

  function gallery(tiles, title) {
    return tiles.map((tile) => {
      const button = el("button", { type: "button", title, "data-tile": String(tile.index) },
        el("img", { loading: "lazy", alt: `tile ${tile.index}`, src: api("tiles", `${tile.index}.jpg`) }));
      button.addEventListener("click", () => flyTo(tile, button));
      return button;
    });
  }

  const top = await getJSON(api("top-tiles"));
  document.getElementById("top-attention").replaceChildren(...gallery(top.attention, "attention"));
  if (top.explanation) {
    document.getElementById("top-explanation").replaceChildren(el("h2", { text: "Highest Shapley share" }),
      el("div", { class: "gallery", "data-class": "explanation" }, ...gallery(top.explanation, "Shapley")));
  }
  const perClass = document.getElementById("top-classes");
  for (const [name, tiles] of Object.entries(top.classes)) {
    perClass.append(el("h2", { text: `Highest P(${name})` }),
      el("div", { class: "gallery", "data-class": name }, ...gallery(tiles, `P(${name})`)));
  }

  // for tests and scripts: the viewer, and whether every layer has drawn its tiles
  window.slidemill = {
    viewer, info, state,
    // every layer drawn, no heatmap being replaced, and the view at rest
    ready: () => Boolean(slideImage && heatImage && replacing === 0 &&
      viewer.world.getItemCount() === 2 && slideImage.getFullyLoaded() &&
      heatImage.getFullyLoaded() && viewer.viewport.getZoom(true) === viewer.viewport.getZoom(false) &&
      viewer.viewport.getCenter(true).equals(viewer.viewport.getCenter(false))),
    imageToScreen: (x, y) => {
      const p = viewer.viewport.pixelFromPoint(slideImage.imageToViewportCoordinates(x, y), true);
      const box = viewer.element.getBoundingClientRect();
      return { x: p.x + box.left, y: p.y + box.top };
    },
    viewportImageBounds: () => {
      const b = slideImage.viewportToImageRectangle(viewer.viewport.getBounds(true));
      return { x: b.x, y: b.y, width: b.width, height: b.height };
    },
  };
})();
