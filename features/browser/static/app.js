/* emosae feature browser. Plain JS, no framework, no network.
 *
 * Data arrives as script files that call EMOSAE_register(kind, key, data): data/site.js and
 * data/index.js with the page, data/f/NNNN.js (one block of features), data/emotions.js and
 * data/run.js on demand. That works from file:// (where Chromium refuses fetch/XHR); fetch is
 * used only for the live endpoints of a server started with a model.
 *
 * Every string from the run (passages, labels, tokens, config) is untrusted: it reaches the page
 * only through textContent, text nodes, attribute values set one by one, or SVG <title>/<text>
 * text. innerHTML is never used. Links are built only for internal routes (#/...). */
(function () {
  "use strict";

  // ---- data registry and script loader ----------------------------------------------------
  const DATA = Object.create(null);
  const waiting = Object.create(null);
  const inflight = Object.create(null);

  window.EMOSAE_register = function (kind, key, data) {
    const k = String(kind) + ":" + String(key);
    DATA[k] = data;
    if (waiting[k]) { waiting[k](data); delete waiting[k]; }
  };

  function loadData(kind, key, path) {
    const k = kind + ":" + key;
    if (k in DATA) return Promise.resolve(DATA[k]);
    if (inflight[k]) return inflight[k];
    inflight[k] = new Promise(function (resolve, reject) {
      waiting[k] = resolve;
      const s = document.createElement("script");
      s.src = path;
      s.async = true;
      s.onload = function () {
        s.remove();
        delete inflight[k];
        if (!(k in DATA)) { delete waiting[k]; reject(new Error("data file did not register: " + path)); }
      };
      s.onerror = function () {
        s.remove();
        delete inflight[k];
        delete waiting[k];
        reject(new Error("could not load " + path));
      };
      document.head.appendChild(s);
    });
    return inflight[k];
  }

  function blockPath(b) { return "data/f/" + String(b).padStart(4, "0") + ".js"; }

  // ---- DOM helpers (text only) --------------------------------------------------------------
  const SAFE_HREF = /^#\/[A-Za-z0-9_\-\/%.~!*'()]*$/;
  const SAFE_SRC = /^assets\/[a-z_]+\.png$/;
  function safeHref(v) { v = String(v); return SAFE_HREF.test(v) ? v : "#/"; }

  function h(tag, props) {
    const e = document.createElement(tag);
    if (props) setProps(e, props);
    for (let i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  const SVGNS = "http://www.w3.org/2000/svg";
  function s(tag, props) {
    const e = document.createElementNS(SVGNS, tag);
    if (props) setProps(e, props);
    for (let i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function setProps(e, props) {
    for (const k of Object.keys(props)) {
      const v = props[k];
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.setAttribute("class", v);
      else if (k === "text") e.textContent = String(v);
      else if (k === "href") e.setAttribute("href", safeHref(v));
      else if (k === "src") { if (SAFE_SRC.test(v)) e.setAttribute("src", v); }
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), v);
      else if (k === "style") Object.assign(e.style, v);
      else e.setAttribute(k, String(v));
    }
  }
  function add(parent, kid) {
    if (kid === null || kid === undefined || kid === false) return;
    if (Array.isArray(kid)) { for (const k of kid) add(parent, k); return; }
    parent.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function svgTitle(text) { const t = document.createElementNS(SVGNS, "title"); t.textContent = String(text); return t; }

  function fmt(x, digits) {
    if (x === null || x === undefined || typeof x !== "number" || !isFinite(x)) return "–";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (Number.isInteger(x) && a < 1e15) return commas(x);
    if (a >= 1e5 || a < 1e-3) return x.toExponential(2);
    return String(Number(x.toPrecision(digits || 3)));
  }
  // Thousands separators without Intl (its first use costs ~50-150 ms, on the list's critical path).
  function commas(n) { return String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ","); }
  const visible = (t) => String(t).replace(/\r?\n/g, "↵");

  // ---- state --------------------------------------------------------------------------------
  const S = {
    site: null, index: null, cols: null, labelIds: null,
    list: { sort: null, dir: -1, label: "__all", q: "", minScore: "", minDens: "", maxDens: "", scroll: 0 },
    fire: null,
  };
  const COLS = [
    { key: "id", name: "feature", num: true },
    { key: "label", name: "label", num: false },
    { key: "score", name: "label score", num: true },
    { key: "auroc", name: "AUROC", num: true },
    { key: "heldout", name: "held-out AUROC", num: true },
    { key: "density", name: "density", num: true },
    { key: "max_act", name: "max act", num: true },
  ];

  function prepareIndex() {
    const ix = DATA["index:0"];
    const n = ix.n;
    const f64 = (arr) => { const a = new Float64Array(n); for (let i = 0; i < n; i++) { const v = arr[i]; a[i] = (v === null || v === undefined) ? NaN : v; } return a; };
    const id = new Float64Array(n); for (let i = 0; i < n; i++) id[i] = i;
    S.index = ix;
    S.labelIds = Int32Array.from(ix.label);
    S.cols = { id: id, score: f64(ix.score), auroc: f64(ix.auroc), heldout: f64(ix.heldout), density: f64(ix.density), max_act: f64(ix.max_act) };
    S.labelLower = ix.labels.map((x) => String(x).toLowerCase());
    if (S.list.sort === null) S.list.sort = ix.labels.length ? "score" : "id";
    if (S.list.sort === "id") S.list.dir = 1;
  }
  function labelOf(i) { const j = S.labelIds[i]; return j >= 0 ? S.index.labels[j] : null; }

  function setTitle(what) { document.title = "emosae · " + what; }
  function setNav(which) {
    for (const id of ["nav-list", "nav-emotions", "nav-run"]) {
      const e = document.getElementById(id);
      if (e) e.classList.toggle("active", id === which);
    }
  }
  const main = () => document.getElementById("main");

  // ---- router -------------------------------------------------------------------------------
  function route() {
    S.seq = (S.seq || 0) + 1;
    hideTip();
    const hash = location.hash || "#/";
    let m;
    try {
      if (hash === "#/" || hash === "#" || hash === "") return viewList();
      if ((m = /^#\/feature\/(\d{1,9})$/.exec(hash))) return viewFeature(parseInt(m[1], 10));
      if (hash === "#/emotions") return viewEmotions(null);
      if ((m = /^#\/emotion\/(.+)$/.exec(hash)) && decoded(m[1]) !== null) return viewEmotions(decoded(m[1]));
      if (hash === "#/run") return viewRun();
    } catch (err) {
      return showError(err);
    }
    setTitle("not found");
    clear(main()).appendChild(h("p", { class: "error", text: "No such page. " }, h("a", { href: "#/", text: "Back to the feature list" })));
  }
  function decoded(part) {  // a broken %-escape is a page that does not exist, not an error
    try { return decodeURIComponent(part); } catch (e) { return null; }
  }
  function showError(err) {
    clear(main()).appendChild(h("p", { class: "error", text: "Error: " + (err && err.message ? err.message : String(err)) }));
    console.warn(err);
  }

  // ---- feature list -------------------------------------------------------------------------
  function filteredIds() {
    const L = S.list, n = S.index.n, c = S.cols, out = [];
    const q = L.q.trim().toLowerCase();
    const idq = /^#?\d+$/.test(q) ? parseInt(q.replace("#", ""), 10) : null;
    const minScore = L.minScore === "" ? null : Number(L.minScore);
    const minD = L.minDens === "" ? null : Number(L.minDens);
    const maxD = L.maxDens === "" ? null : Number(L.maxDens);
    const labSel = L.label;
    let labIdx = null;  // label options are "=" + name, so no label can pose as "__all"
    if (labSel.charAt(0) === "=") labIdx = S.index.labels.indexOf(labSel.slice(1));
    for (let i = 0; i < n; i++) {
      const lj = S.labelIds[i];
      if (labSel === "__labeled" && lj < 0) continue;
      if (labSel === "__none" && lj >= 0) continue;
      if (labIdx !== null && lj !== labIdx) continue;
      if (idq !== null) { if (i !== idq) continue; }
      else if (q && (lj < 0 || S.labelLower[lj].indexOf(q) < 0)) continue;
      if (minScore !== null && isFinite(minScore) && !(c.score[i] >= minScore)) continue;
      if (minD !== null && isFinite(minD) && !(c.density[i] >= minD)) continue;
      if (maxD !== null && isFinite(maxD) && !(c.density[i] <= maxD)) continue;
      out.push(i);
    }
    const key = S.list.sort, dir = S.list.dir;
    if (key === "label") {
      out.sort((a, b) => {
        const la = labelOf(a), lb = labelOf(b);
        if (la === null && lb === null) return a - b;
        if (la === null) return 1;
        if (lb === null) return -1;
        return dir * (la < lb ? -1 : la > lb ? 1 : 0) || (c.score[b] - c.score[a]) || a - b;
      });
    } else {
      const col = c[key];
      out.sort((a, b) => {
        const x = col[a], y = col[b];
        const nx = x !== x, ny = y !== y;
        if (nx || ny) return nx && ny ? a - b : nx ? 1 : -1;
        return dir * (x - y) || a - b;
      });
    }
    return out;
  }

  function viewList() {
    setTitle("features");
    setNav("nav-list");
    const root = clear(main());
    const ix = S.index, L = S.list;
    const labelled = ix.label.reduce((acc, j) => acc + (j >= 0 ? 1 : 0), 0);
    root.appendChild(h("h1", { text: "Features" }, h("span", { class: "muted", text: "  " + commas(ix.n) + " features, " + commas(labelled) + " labeled" })));

    const live = S.site.live;
    if (live && live.fire && S.site.mode === "server") root.appendChild(firePanel());

    const labelSel = h("select", { id: "f-label", "aria-label": "label" });
    const opts = [["__all", "any"], ["__labeled", "labeled"], ["__none", "unlabeled"]].concat(ix.labels.map((x) => ["=" + x, x]));
    for (const [v, t] of opts) { const o = h("option", { text: t }); o.value = v; labelSel.appendChild(o); }
    labelSel.value = L.label;
    const search = h("input", { id: "f-search", type: "search", placeholder: "label text or feature id", "aria-label": "search" });
    search.value = L.q;
    const minScore = h("input", { id: "f-minscore", class: "small", type: "number", step: "any", placeholder: "e.g. 0.8" });
    minScore.value = L.minScore;
    const minDens = h("input", { id: "f-mindens", class: "small", type: "number", step: "any", min: "0", max: "1", placeholder: "0" });
    minDens.value = L.minDens;
    const maxDens = h("input", { id: "f-maxdens", class: "small", type: "number", step: "any", min: "0", max: "1", placeholder: "1" });
    maxDens.value = L.maxDens;
    const count = h("span", { class: "count", id: "f-count" });
    root.appendChild(h("div", { class: "filters" },
      h("label", null, "search", search), h("label", null, "label", labelSel),
      h("label", null, "min label score", minScore), h("label", null, "min density", minDens),
      h("label", null, "max density", maxDens), count));

    const head = h("div", { class: "vhead", role: "row" });
    for (const col of COLS) {
      const cls = (col.num && col.key !== "id" ? "n " : "") + (L.sort === col.key ? "sorted " + (L.dir > 0 ? "asc" : "desc") : "");
      head.appendChild(h("span", { class: cls, "data-key": col.key, role: "columnheader", text: col.name, onclick: function () {
        if (L.sort === col.key) L.dir = -L.dir; else { L.sort = col.key; L.dir = (col.key === "id" || col.key === "label") ? 1 : -1; }
        L.scroll = 0;
        viewList();
      } }));
    }
    root.appendChild(head);
    const list = h("div", { class: "vlist", id: "flist", role: "table" });
    const spacer = h("div", { class: "vspacer" });
    const win = h("div", { class: "vwin" });
    spacer.appendChild(win);
    list.appendChild(spacer);
    root.appendChild(list);

    let ids = filteredIds();
    const rowH = 30;
    function draw() {
      const top = list.scrollTop, height = list.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / rowH) - 5);
      const last = Math.min(ids.length, Math.ceil((top + height) / rowH) + 5);
      spacer.style.height = (ids.length * rowH) + "px";
      win.style.top = (first * rowH) + "px";
      clear(win);
      for (let r = first; r < last; r++) win.appendChild(rowFor(ids[r]));
      L.scroll = top;
    }
    function refresh() {
      ids = filteredIds();
      count.textContent = commas(ids.length) + " of " + commas(ix.n) + " shown";
      list.scrollTop = 0;
      draw();
    }
    let raf = 0;
    list.addEventListener("scroll", function () { if (!raf) raf = requestAnimationFrame(function () { raf = 0; draw(); }); });
    const onInput = function () {
      L.q = search.value; L.label = labelSel.value; L.minScore = minScore.value; L.minDens = minDens.value; L.maxDens = maxDens.value;
      refresh();
    };
    for (const e of [search, minScore, minDens, maxDens]) e.addEventListener("input", onInput);
    labelSel.addEventListener("change", onInput);
    count.textContent = commas(ids.length) + " of " + commas(ix.n) + " shown";
    const saved = L.scroll;  // coming back from a feature page: keep the list's place
    draw();
    if (saved) { list.scrollTop = saved; draw(); }
    if (!window.EMOSAE_FIRST_RENDER) {
      window.EMOSAE_FIRST_RENDER = performance.now();
      document.documentElement.setAttribute("data-first-render-ms", String(Math.round(window.EMOSAE_FIRST_RENDER)));
    }
  }

  function rowFor(i) {
    const c = S.cols, lab = labelOf(i);
    return h("a", { class: "vrow", href: "#/feature/" + i, role: "row", "data-id": i },
      h("span", { class: "mono", text: "#" + i }),
      h("span", { class: lab === null ? "nolab" : "lab", text: lab === null ? "—" : lab }),
      h("span", { class: "n", text: fmt(c.score[i]) }),
      h("span", { class: "n", text: fmt(c.auroc[i]) }),
      h("span", { class: "n", text: fmt(c.heldout[i]) }),
      h("span", { class: "n", text: fmt(c.density[i]) }),
      h("span", { class: "n", text: fmt(c.max_act[i]) }));
  }

  // ---- live endpoints (server with a model only) ---------------------------------------------
  function api(path, body) {
    if (S.site.mode !== "server" || !S.site.live) return Promise.reject(new Error("no model on this page"));
    if (path !== "api/fire" && path !== "api/clamp") return Promise.reject(new Error("unknown endpoint"));
    return fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), credentials: "same-origin" })
      .then((r) => r.json().then((j) => { if (!r.ok) throw new Error(j && j.error ? String(j.error) : "HTTP " + r.status); return j; }));
  }

  function firePanel() {
    const ta = h("textarea", { id: "fire-text", placeholder: "Type a passage: which features fire on it?", maxlength: String(S.site.live.max_chars || 4000) });
    const btn = h("button", { id: "fire-go", text: "Which features fire?" });
    const out = h("div", { id: "fire-out" });
    btn.addEventListener("click", function () {
      btn.disabled = true;
      clear(out).appendChild(h("p", { class: "muted", text: "Running the model…" }));
      api("api/fire", { text: ta.value }).then(function (res) { S.fire = res; renderFire(out, res, res.features.length ? res.features[0].id : null); })
        .catch(function (err) { clear(out).appendChild(h("p", { class: "error", text: String(err.message || err) })); })
        .finally(function () { btn.disabled = false; });
    });
    const panel = h("div", { class: "panel" }, h("h3", { text: "Which features fire on this text (" + S.site.live.model + ")" }), ta, h("div", { class: "row" }, btn), out);
    if (S.fire) renderFire(out, S.fire, S.fire.sel);
    return panel;
  }

  function renderFire(out, res, sel) {
    res.sel = sel;
    clear(out);
    if (!res.features.length) { out.appendChild(h("p", { class: "muted", text: "No feature fires on this text." })); return; }
    const feat = res.features.find((f) => f.id === sel) || res.features[0];
    const toks = h("div", { class: "ctx ctxs out", id: "fire-tokens" });
    for (let j = 0; j < res.tokens.length; j++) {
      const v = feat.acts[j] || 0;
      const span = h("span", { class: "tok" + (res.masked[j] ? " masked" : ""), "data-act": fmt(v), text: visible(res.tokens[j]) });
      if (v > 0 && feat.max > 0) span.style.backgroundColor = "rgba(255,122,0," + (0.12 + 0.8 * Math.min(1, v / feat.max)).toFixed(3) + ")";
      toks.appendChild(span);
    }
    const list = h("div", { class: "firelist" });
    for (const f of res.features) {
      const lab = labelOf(f.id);
      const b = h("button", { class: "plain" + (f.id === feat.id ? " sel" : ""), text: "#" + f.id + (lab ? " " + lab : "") + " · " + fmt(f.max) });
      b.addEventListener("click", () => renderFire(out, res, f.id));
      list.appendChild(b);
    }
    out.appendChild(h("p", null, "Highlighting ", h("a", { href: "#/feature/" + feat.id, text: "feature #" + feat.id }), labelOf(feat.id) ? h("span", { class: "badge", text: labelOf(feat.id) }) : null,
      res.truncated ? h("span", { class: "muted", text: " (text cut to the first tokens)" }) : null));
    out.appendChild(toks);
    out.appendChild(h("h3", { text: "Top features (click to highlight)" }));
    out.appendChild(list);
  }

  // ---- feature page -------------------------------------------------------------------------
  function viewFeature(id) {
    setNav("nav-list");
    setTitle("feature " + id);
    const root = clear(main());
    if (!(id >= 0 && id < S.site.n)) { root.appendChild(h("p", { class: "error", text: "Feature " + id + " does not exist (0.." + (S.site.n - 1) + ")." })); return; }
    root.appendChild(h("p", { class: "muted", text: "Loading feature " + id + "…" }));
    const b = Math.floor(id / S.site.block), seq = S.seq;
    loadData("block", b, blockPath(b)).then(function (block) {
      if (seq !== S.seq) return;  // the user went elsewhere meanwhile
      renderFeature(block, block.features[id - block.lo]);
    }).catch(showError);
  }

  function stat(name, value) { return h("div", { class: "stat" }, h("b", { text: name }), h("span", { text: value })); }

  function renderFeature(block, f) {
    const root = clear(main());
    const id = f.id, lab = f.lab || null;
    const label = lab && lab.label !== null ? lab.label : null;
    root.appendChild(h("div", { class: "nav2" },
      h("a", { href: "#/", text: "← all features" }),
      id > 0 ? h("a", { href: "#/feature/" + (id - 1), text: "‹ #" + (id - 1) }) : null,
      id + 1 < S.site.n ? h("a", { href: "#/feature/" + (id + 1), text: "#" + (id + 1) + " ›" }) : null,
      label !== null ? h("a", { href: "#/emotion/" + encodeURIComponent(label), text: "emotion page" }) : null));
    root.appendChild(h("h1", { id: "feature-title" }, "Feature #" + id, label !== null ? h("span", { class: "badge", id: "feature-label", text: label }) : h("span", { class: "badge none", text: "no label" })));
    root.appendChild(h("div", { class: "stats" },
      stat("label score", fmt(lab ? lab.score : null)), stat("AUROC", fmt(lab ? lab.auroc : null)),
      stat("held-out AUROC", fmt(S.cols.heldout[id])), stat("density", fmt(f.dens !== undefined ? f.dens : S.cols.density[id])),
      stat("max act", fmt(f.max !== undefined ? f.max : S.cols.max_act[id]))));
    if (lab && lab.explanation) root.appendChild(h("p", null, h("b", { text: "Explanation: " }), lab.explanation));

    const live = S.site.live;
    if (live && live.clamp && S.site.mode === "server") root.appendChild(clampPanel(id));

    if (lab && lab.evidence && lab.evidence.length) {
      root.appendChild(h("h2", { text: "Labeling evidence (top passages)" }));
      const ul = h("ul", { class: "evidence", id: "evidence" });
      for (const e of lab.evidence) ul.appendChild(h("li", null, h("div", { class: "meta", text: (e.emotion ? e.emotion : "") + " · act " + fmt(e.act) }), h("div", { class: "ev-text", text: e.text })));
      root.appendChild(ul);
    }

    if (!S.site.has_stats) {
      root.appendChild(h("p", { class: "muted", text: "No feature statistics in this run: run `emosae stats RUN` to see contexts, histograms and logit effects." }));
    }
    if (f.top) {
      root.appendChild(h("h2", { text: "Top activating contexts" }));
      root.appendChild(contexts(block, f.top, f.sc, "top-contexts"));
      const peak = f.max !== undefined ? f.max : S.cols.max_act[id];
      if (!f.top.v.length) root.appendChild(h("p", { class: "muted", text: peak > 0 ? "No contexts kept (--max-contexts 0)." : "This feature never fired on the statistics corpus." }));
    }
    const grid = h("div", { class: "grid2" });
    if (f.hist) grid.appendChild(h("div", null, h("h2", { text: "Activation histogram (non-zero activations)" }), histogram(f.hist)));
    if (f.lp || f.ln) grid.appendChild(h("div", null, h("h2", { text: "Logit effects" }), logits(block.strings, f.lp || [], f.ln || [])));
    if (f.nb) grid.appendChild(h("div", null, h("h2", { text: "Nearest features (decoder cosine)" }), neighbors(f.nb)));
    if (f.al) grid.appendChild(h("div", null, h("h2", { text: "Alignment with emotion vectors" }), alignment(f.al)));
    else if (S.site.has_stats) grid.appendChild(h("div", null, h("h2", { text: "Alignment with emotion vectors" }), h("p", { class: "muted", text: "No emotion vectors at this SAE's layer (run `emosae vectors`)." })));
    root.appendChild(grid);
    if (f.q && f.q.v.length) {
      root.appendChild(h("h2", { text: "Samples from the quantile bins" }));
      const wrap = h("div", { id: "quantiles" });
      const bins = {};
      f.q.bin.forEach((b, j) => { (bins[b] = bins[b] || []).push(j); });
      const keys = Object.keys(bins).map(Number).sort((a, b) => b - a);
      for (const b of keys) {
        const js = bins[b];
        const sub = { v: js.map((j) => f.q.v[j]), t: js.map((j) => f.q.t[j]), a: js.map((j) => f.q.a[j]), d: f.q.d ? js.map((j) => f.q.d[j]) : null };
        wrap.appendChild(h("div", { class: "bin" }, h("h3", { text: "bin " + (b + 1) + " of " + (S.site.quantile_bins || keys.length) + (b === keys[0] ? " (highest)" : b === keys[keys.length - 1] ? " (lowest)" : "") }), contexts(block, sub, f.sc)));
      }
      root.appendChild(wrap);
    }
  }

  // Token windows and values arrive as fixed-width base64url digit strings (see blocks.py).
  const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const B64DEC = new Int16Array(128).fill(0);
  for (let i = 0; i < 64; i++) B64DEC[B64.charCodeAt(i)] = i;
  function unpack(str, w) {
    const n = Math.floor(str.length / w), out = new Array(n);
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let j = 0; j < w; j++) v = v * 64 + B64DEC[str.charCodeAt(i * w + j) & 127];
      out[i] = v;
    }
    return out;
  }

  // Values come sparse: (position, value) pairs of pw + 2 digits for the non-zero tokens only.
  function unpackSparse(str, pw, n) {
    const out = new Array(n).fill(0), w = pw + 2, pairs = unpack(str, 1);
    for (let i = 0; i + w <= pairs.length; i += w) {
      let p = 0;
      for (let j = 0; j < pw; j++) p = p * 64 + pairs[i + j];
      if (p < n) out[p] = pairs[i + pw] * 64 + pairs[i + pw + 1];
    }
    return out;
  }

  function contexts(block, c, scale, id) {
    const wrap = h("div", { class: "ctxs", id: id || null });
    const strings = block.strings, levels = block.aq || 4095;
    for (let r = 0; r < c.v.length; r++) {
      const t = unpack(c.t[r], block.tw), a = unpackSparse(c.a[r], block.pw || 1, t.length);
      const center = S.site.window !== null && S.site.window !== undefined && 2 * S.site.window + 1 === t.length ? S.site.window : Math.floor(t.length / 2);
      const line = h("div", { class: "ctx" });
      for (let j = 0; j < t.length; j++) {
        if (t[j] === 0) continue;  // outside the document
        const val = a[j] * (scale || 1) / levels;
        const span = h("span", { class: "tok" + (j === center ? " center" : ""), "data-act": fmt(val), title: "activation " + fmt(val), text: visible(strings[t[j] - 1]) });
        if (a[j] > 0) span.style.backgroundColor = "rgba(255,122,0," + (0.12 + 0.8 * Math.min(1, a[j] / levels)).toFixed(3) + ")";
        line.appendChild(span);
      }
      const doc = c.d ? c.d[r] : null;
      wrap.appendChild(h("div", { class: "ctxrow" }, h("span", { class: "v", text: fmt(c.v[r]), title: doc !== null && doc >= 0 ? "document " + doc : null }), line));
    }
    return wrap;
  }

  function histogram(hist) {
    const W = 460, H = 160, P = 28, n = hist.c.length;
    const maxLog = Math.max(1, ...hist.c.map((c) => Math.log10(1 + c)));
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, id: "histogram", role: "img" });
    svg.appendChild(svgTitle("histogram of non-zero activations (log count)"));
    const bw = (W - 2 * P) / n, lo = hist.lo || 0, hi = hist.hi || 0;
    for (let i = 0; i < n; i++) {
      const v = Math.log10(1 + hist.c[i]) / maxLog, bh = v * (H - 2 * P);
      const a = lo + (hi - lo) * i / n, b = lo + (hi - lo) * (i + 1) / n;
      svg.appendChild(s("rect", { class: "bar", x: (P + i * bw).toFixed(1), y: (H - P - bh).toFixed(1), width: Math.max(1, bw - 1).toFixed(1), height: bh.toFixed(1) },
        svgTitle(fmt(a) + " – " + fmt(b) + ": " + commas(hist.c[i]))));
    }
    svg.appendChild(s("line", { class: "axis", x1: P, y1: H - P, x2: W - P, y2: H - P }));
    svg.appendChild(s("text", { x: P, y: H - P + 14, text: fmt(lo) }));
    svg.appendChild(s("text", { x: W - P, y: H - P + 14, "text-anchor": "end", text: fmt(hi) }));
    svg.appendChild(s("text", { x: W / 2, y: H - 4, "text-anchor": "middle", text: "activation" }));
    svg.appendChild(s("text", { x: P, y: 12, text: "count (log)  total " + commas(hist.c.reduce((x, y) => x + y, 0)) }));
    return svg;
  }

  function bar(value, maxAbs) {
    const cell = h("div", { class: "barcell" });
    const w = Math.min(100, 100 * Math.abs(value) / (maxAbs || 1));
    cell.appendChild(h("i", { class: value < 0 ? "neg" : "", style: { left: "0", width: w.toFixed(1) + "%" } }));
    return cell;
  }

  function logits(strings, pos, neg) {
    const table = (rows, title) => {
      const maxAbs = Math.max(1e-9, ...rows.map((r) => Math.abs(r[1])));
      const t = h("table", null, h("tr", null, h("th", { text: title }), h("th", { class: "num", text: "logit" }), h("th")));
      for (const [sidx, v] of rows) t.appendChild(h("tr", null, h("td", { class: "t", text: JSON.stringify(strings[sidx]) }), h("td", { class: "num", text: fmt(v) }), h("td", null, bar(v, maxAbs))));
      return t;
    };
    return h("div", { class: "logits", id: "logits" }, table(pos, "promoted"), table(neg, "suppressed"));
  }

  function neighbors(nb) {
    const t = h("table", { id: "neighbors" }, h("tr", null, h("th", { text: "feature" }), h("th", { text: "label" }), h("th", { class: "num", text: "cosine" })));
    for (const [j, c] of nb) {
      const lab = labelOf(j);
      t.appendChild(h("tr", null, h("td", null, h("a", { href: "#/feature/" + j, text: "#" + j })), h("td", { text: lab === null ? "—" : lab }), h("td", { class: "num", text: fmt(c) })));
    }
    return t;
  }

  function alignment(al) {
    const names = S.site.align_emotions || [];
    const maxAbs = Math.max(1e-9, ...al.map((r) => Math.abs(r[1] || 0)));
    const t = h("table", { id: "alignment" }, h("tr", null, h("th", { text: "emotion vector" }), h("th", { class: "num", text: "cosine" }), h("th")));
    for (const [j, c] of al) {
      const name = names[j];
      t.appendChild(h("tr", null, h("td", null, name !== undefined ? h("a", { href: "#/emotion/" + encodeURIComponent(name), text: name }) : "?"), h("td", { class: "num", text: fmt(c) }), h("td", null, bar(c || 0, maxAbs))));
    }
    return t;
  }

  function clampPanel(id) {
    const prompt = h("textarea", { id: "clamp-prompt", placeholder: "A prompt for the model (the chat template is applied)" });
    prompt.value = "Write two sentences about your morning.";
    const mode = h("select", { id: "clamp-mode" });
    for (const m of ["set", "add", "scale", "ablate"]) { const o = h("option", { text: m }); o.value = m; mode.appendChild(o); }
    const strength = h("input", { id: "clamp-strength", type: "text", title: "8.0 (absolute), 4x (of max act) or 0.05r (of the mean residual norm)" });
    strength.value = "4x";
    const seed = h("input", { id: "clamp-seed", type: "number", min: "0", step: "1" });
    seed.value = "0";
    const ntok = h("input", { id: "clamp-ntok", type: "number", min: "1", max: String(S.site.live.max_new_tokens || 80), step: "1" });
    ntok.value = "40";
    const btn = h("button", { id: "clamp-go", text: "Generate baseline and clamped" });
    const out = h("div", { id: "clamp-out" });
    btn.addEventListener("click", function () {
      btn.disabled = true;
      clear(out).appendChild(h("p", { class: "muted", text: "Generating…" }));
      api("api/clamp", { feature: id, prompt: prompt.value, mode: mode.value, strength: strength.value, seed: parseInt(seed.value, 10) || 0, max_new_tokens: parseInt(ntok.value, 10) || 40 })
        .then(function (res) {
          clear(out);
          out.appendChild(h("p", { class: "muted", text: String(res.summary || "") + " · seed " + res.seed }));
          out.appendChild(h("div", { class: "grid2" },
            h("div", null, h("h3", { text: "Baseline" }), h("div", { class: "out", id: "clamp-baseline", text: res.baseline })),
            h("div", null, h("h3", { text: "Clamped" }), h("div", { class: "out", id: "clamp-clamped", text: res.clamped }))));
        })
        .catch(function (err) { clear(out).appendChild(h("p", { class: "error", text: String(err.message || err) })); })
        .finally(function () { btn.disabled = false; });
    });
    return h("div", { class: "panel", id: "clamp-panel" }, h("h3", { text: "Clamp playground (" + S.site.live.model + ")" }), prompt,
      h("div", { class: "row" }, h("label", null, "mode", mode), h("label", null, "strength", strength), h("label", null, "seed", seed), h("label", null, "new tokens", ntok), btn), out);
  }

  // ---- emotions -----------------------------------------------------------------------------
  function viewEmotions(name) {
    setNav("nav-emotions");
    setTitle(name === null ? "emotions" : "emotion");
    const root = clear(main());
    root.appendChild(h("p", { class: "muted", text: "Loading…" }));
    const seq = S.seq;
    loadData("emotions", 0, "data/emotions.js").then(function (E) {
      if (seq !== S.seq) return;
      if (name === null) renderEmotionList(E); else renderEmotion(E, name);
    }).catch(showError);
  }

  function ciBar(auroc, ci) {
    const cell = h("div", { class: "barcell", title: "AUROC on a 0.5 – 1 scale, with its CI" });
    const x = (v) => Math.max(0, Math.min(100, (v - 0.5) * 200));
    if (ci && ci[0] !== null && ci[1] !== null) cell.appendChild(h("i", { class: "ci", style: { left: x(ci[0]).toFixed(1) + "%", width: Math.max(1, x(ci[1]) - x(ci[0])).toFixed(1) + "%" } }));
    if (auroc !== null) cell.appendChild(h("i", { class: "pt", style: { left: x(auroc).toFixed(1) + "%" } }));
    return cell;
  }
  const ciText = (ci) => ci && ci[0] !== null ? fmt(ci[0]) + " – " + fmt(ci[1]) : "–";

  function renderEmotionList(E) {
    const root = clear(main());
    root.appendChild(h("h1", { text: "Emotions" }, h("span", { class: "muted", text: "  " + E.emotions.length + " emotions" })));
    const t = h("table", { id: "emotion-table" }, h("tr", null, ["emotion", "best feature", "label", "AUROC", "held-out AUROC", "95% CI", "", "ranked"].map((x, i) => h("th", { class: i >= 3 && i !== 6 ? "num" : "", text: x }))));
    for (const e of E.emotions) {
      const top = e.features[0] || {};
      t.appendChild(h("tr", null,
        h("td", null, h("a", { href: "#/emotion/" + encodeURIComponent(e.name), text: e.name })),
        h("td", null, top.feature !== null && top.feature !== undefined ? h("a", { href: "#/feature/" + top.feature, text: "#" + top.feature }) : "–"),
        h("td", { text: top.feature !== null && top.feature !== undefined && labelOf(top.feature) !== null ? labelOf(top.feature) : "—" }),
        h("td", { class: "num", text: fmt(top.auroc) }), h("td", { class: "num", text: fmt(top.heldout_auroc) }),
        h("td", { class: "num", text: ciText(top.ci) }), h("td", null, ciBar(top.heldout_auroc !== null && top.heldout_auroc !== undefined ? top.heldout_auroc : top.auroc, top.ci)),
        h("td", { class: "num", text: String(e.features.length) })));
    }
    if (E.map) { root.appendChild(h("h2", { text: "Emotion map" })); root.appendChild(emotionMap(E.map, null)); }
    else if (E.has_map_png) { root.appendChild(h("h2", { text: "Emotion map" })); root.appendChild(h("img", { src: "assets/emotion_map.png", alt: "emotion map" })); }
    root.appendChild(h("h2", { text: "Ranked features per emotion" }));
    root.appendChild(t);
    for (const [key, title] of [["heldout", "Held-out scores"], ["null", "Shuffled-label null (what chance looks like)"], ["settings", "Labeling settings"]]) {
      if (E[key] !== null && E[key] !== undefined) { root.appendChild(h("h2", { text: title })); root.appendChild(kv(E[key])); }
    }
    if (E.geometry && Object.keys(E.geometry).length) { root.appendChild(h("h2", { text: "Geometry" })); root.appendChild(kv(E.geometry)); }
  }

  function renderEmotion(E, name) {
    const root = clear(main());
    const e = E.emotions.find((x) => x.name === name);
    root.appendChild(h("div", { class: "nav2" }, h("a", { href: "#/emotions", text: "← all emotions" })));
    root.appendChild(h("h1", { id: "emotion-title" }, "Emotion: ", h("span", { class: "badge", text: name })));
    if (!e) {
      const feats = [];
      for (let i = 0; i < S.index.n; i++) if (labelOf(i) === name) feats.push(i);
      if (!feats.length) { root.appendChild(h("p", { class: "error", text: "This run has no emotion by that name." })); return; }
      root.appendChild(h("p", null, "Features labeled with it: ", feats.slice(0, 200).map((i) => [h("a", { href: "#/feature/" + i, text: "#" + i }), " "])));
      return;
    }
    const t = h("table", { id: "ranked" }, h("tr", null, ["rank", "feature", "label", "AUROC", "held-out AUROC", "95% CI", "", "precision@k"].map((x, i) => h("th", { class: i >= 3 && i !== 6 ? "num" : "", text: x }))));
    e.features.forEach(function (r, k) {
      t.appendChild(h("tr", null, h("td", { text: String(k + 1) }),
        h("td", null, r.feature !== null ? h("a", { href: "#/feature/" + r.feature, text: "#" + r.feature }) : "–"),
        h("td", { text: r.feature !== null && labelOf(r.feature) !== null ? labelOf(r.feature) : "—" }),
        h("td", { class: "num", text: fmt(r.auroc) }), h("td", { class: "num", text: fmt(r.heldout_auroc) }),
        h("td", { class: "num", text: ciText(r.ci) }), h("td", null, ciBar(r.heldout_auroc !== null ? r.heldout_auroc : r.auroc, r.ci)),
        h("td", { class: "num", text: fmt(r.precision_at_k) })));
    });
    root.appendChild(h("h2", { text: "Ranked features" }));
    root.appendChild(t);
    if (e.aligned.length) {
      const ta = h("table", { id: "aligned" }, h("tr", null, h("th", { text: "feature" }), h("th", { text: "label" }), h("th", { class: "num", text: "cosine with the emotion vector" })));
      for (const r of e.aligned) ta.appendChild(h("tr", null, h("td", null, r.feature !== null ? h("a", { href: "#/feature/" + r.feature, text: "#" + r.feature }) : "–"), h("td", { text: r.feature !== null && labelOf(r.feature) !== null ? labelOf(r.feature) : "—" }), h("td", { class: "num", text: fmt(r.cos) })));
      root.appendChild(h("h2", { text: "Features best aligned with the emotion vector" }));
      root.appendChild(ta);
    }
    if (E.map) { root.appendChild(h("h2", { text: "Emotion map" })); root.appendChild(emotionMap(E.map, name)); }
  }

  function emotionMap(map, selected) {
    const W = 720, H = 480, P = 36;
    const xs = map.points.map((p) => p.x).concat(map.features.map((f) => f[1]));
    const ys = map.points.map((p) => p.y).concat(map.features.map((f) => f[2]));
    const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    const sx = (x) => P + (W - 2 * P) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
    const sy = (y) => H - P - (H - 2 * P) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, id: "emotion-map", role: "img" });
    svg.appendChild(svgTitle("emotion map: " + map.x_label + " × " + map.y_label));
    svg.appendChild(s("line", { class: "axis", x1: P, y1: H - P, x2: W - P, y2: H - P }));
    svg.appendChild(s("line", { class: "axis", x1: P, y1: P, x2: P, y2: H - P }));
    svg.appendChild(s("text", { x: W / 2, y: H - 8, "text-anchor": "middle", text: map.x_label }));
    svg.appendChild(s("text", { x: 12, y: H / 2, transform: "rotate(-90 12 " + (H / 2) + ")", "text-anchor": "middle", text: map.y_label }));
    for (const f of map.features) {
      const lab = labelOf(f[0]);
      const a = s("a", { href: "#/feature/" + f[0] });
      a.appendChild(s("circle", { class: "feat" + (selected !== null && lab === selected ? " sel" : ""), cx: sx(f[1]).toFixed(1), cy: sy(f[2]).toFixed(1), r: 2.5 },
        svgTitle("feature #" + f[0] + (lab !== null ? " (" + lab + ")" : "") + " score " + fmt(f[3]))));
      svg.appendChild(a);
    }
    for (const p of map.points) {
      const sel = selected !== null && p.name === selected;
      const a = s("a", { href: "#/emotion/" + encodeURIComponent(p.name) });
      a.appendChild(s("circle", { class: "emo" + (sel ? " sel" : ""), cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: sel ? 5 : 3.5 }, svgTitle(p.name)));
      a.appendChild(s("text", { class: "emolab" + (sel ? " sel" : ""), x: (sx(p.x) + 5).toFixed(1), y: (sy(p.y) - 4).toFixed(1), text: p.name }));
      svg.appendChild(a);
    }
    return h("div", null, svg, h("p", { class: "muted", text: map.features.length + " labeled features drawn around the emotion they are labeled with; axes " + map.x_label + " × " + map.y_label + "." }));
  }

  // ---- run page -----------------------------------------------------------------------------
  function viewRun() {
    setNav("nav-run");
    setTitle("run");
    const root = clear(main());
    root.appendChild(h("p", { class: "muted", text: "Loading…" }));
    const seq = S.seq;
    loadData("run", 0, "data/run.js").then(function (R) { if (seq === S.seq) renderRun(R); }).catch(showError);
  }

  function lineChart(xs, ys, title) {
    const W = 340, H = 150, P = 30;
    const pts = xs.map((x, i) => [x, ys[i]]).filter((p) => p[0] !== null && p[1] !== null);
    const svg = s("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, class: "chart" });
    svg.appendChild(s("text", { x: P, y: 14, text: title }));
    if (pts.length < 2) return svg;
    const x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
    const y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
    const sx = (x) => P + (W - 2 * P) * (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5);
    const sy = (y) => H - P - (H - 2 * P - 10) * (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5);
    svg.appendChild(s("polyline", { class: "line", points: pts.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ") }));
    svg.appendChild(s("line", { class: "axis", x1: P, y1: H - P, x2: W - P, y2: H - P }));
    svg.appendChild(s("text", { x: P, y: H - P + 13, text: fmt(x0) }));
    svg.appendChild(s("text", { x: W - P, y: H - P + 13, "text-anchor": "end", text: fmt(x1) }));
    svg.appendChild(s("text", { x: W - P, y: 14, "text-anchor": "end", text: fmt(y0) + " – " + fmt(y1) }));
    return svg;
  }

  function renderRun(R) {
    const root = clear(main());
    root.appendChild(h("h1", { text: "Run " }, h("span", { class: "mono", text: R.name })));
    root.appendChild(h("h2", { text: "Training metrics" }));
    root.appendChild(Object.keys(R.metrics).length ? kv(R.metrics, "metrics") : h("p", { class: "muted", text: "No metrics.json in this run." }));
    if (R.images.indexOf("curves.png") >= 0) {
      root.appendChild(h("h2", { text: "Training curves" }));
      root.appendChild(h("img", { src: "assets/curves.png", alt: "training curves", style: { maxWidth: "100%" } }));
    }
    const H = R.history, xkey = H.step ? "step" : H.tokens ? "tokens" : null;
    if (xkey) {
      const charts = h("div", { class: "stats" });
      for (const k of ["loss", "fve", "l0", "dead", "lr"]) if (H[k]) charts.appendChild(lineChart(H[xkey], H[k], k + " vs " + xkey));
      root.appendChild(h("h2", { text: "History" }));
      root.appendChild(charts);
    }
    const lab = R.labels || {};
    if (lab.heldout || lab.null) {
      root.appendChild(h("h2", { text: "Labeling: held-out scores" }));
      if (lab.heldout) root.appendChild(kv(lab.heldout));
      if (lab.null) { root.appendChild(h("h3", { text: "Shuffled-label null" })); root.appendChild(kv(lab.null)); }
    }
    if (R.vectors) { root.appendChild(h("h2", { text: "Emotion vectors" })); root.appendChild(kv(R.vectors)); }
    if (R.config) { root.appendChild(h("h2", { text: "Config (config.yaml)" })); root.appendChild(h("pre", { id: "config", text: R.config })); }
    if (R.sae) { root.appendChild(h("h2", { text: "SAE (sae/cfg.json)" })); root.appendChild(kv(R.sae)); }
    if (R.stats_meta && Object.keys(R.stats_meta).length) { root.appendChild(h("h2", { text: "Feature statistics" })); root.appendChild(kv(R.stats_meta)); }
  }

  // A key/value table for free-form JSON, text only.
  function kv(obj, id, depth) {
    depth = depth || 0;
    if (obj === null || typeof obj !== "object") return document.createTextNode(typeof obj === "number" ? fmt(obj, 4) : String(obj));
    if (Array.isArray(obj)) {
      if (obj.every((x) => x === null || typeof x !== "object")) return document.createTextNode(obj.map((x) => typeof x === "number" ? fmt(x, 4) : String(x)).join(", "));
      if (depth > 3) return document.createTextNode("[" + obj.length + " items]");
      const ul = h("ul");
      for (const x of obj) ul.appendChild(h("li", null, kv(x, null, depth + 1)));
      return ul;
    }
    const t = h("table", { class: "kv", id: id || null });
    for (const k of Object.keys(obj)) t.appendChild(h("tr", null, h("td", { text: k }), h("td", null, depth > 3 ? "…" : kv(obj[k], null, depth + 1))));
    return t;
  }

  // ---- tooltip for token values ---------------------------------------------------------------
  let tip = null;
  function hideTip() { if (tip) tip.hidden = true; }
  function onOver(ev) {
    const t = ev.target;
    if (!(t instanceof Element) || !t.classList.contains("tok")) return hideTip();
    tip = tip || document.getElementById("tip");
    tip.textContent = "act " + t.getAttribute("data-act") + "   " + JSON.stringify(t.textContent);
    tip.hidden = false;
    const r = t.getBoundingClientRect();
    tip.style.left = Math.max(4, Math.min(window.innerWidth - 260, r.left)) + "px";
    tip.style.top = (r.bottom + 4) + "px";
  }

  // ---- start --------------------------------------------------------------------------------
  function start() {
    S.site = DATA["site:0"];
    if (!S.site || !DATA["index:0"]) { showError(new Error("data/site.js or data/index.js did not load; re-export the site")); return; }
    prepareIndex();
    const rn = document.getElementById("runname");
    if (rn) rn.textContent = S.site.name + (S.site.hook ? " · " + S.site.hook : "") + (S.site.live ? " · model " + S.site.live.model : "");
    document.addEventListener("mouseover", onOver);
    window.addEventListener("hashchange", route);
    route();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
