// fagan explore: the page. Served by `fagan explore` (talks to /api/...) or exported with
// --export (reads the results embedded in <script id="fagan-data">, talks to nothing).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const embedded = $("fagan-data");
  const STATIC = embedded !== null;
  const PANEL_SIZE = 256;
  const SEED_RE = /^(0|[1-9][0-9]{0,18})$/;
  const SEED_MAX = (1n << 63n) - 1n;

  const state = {
    info: null,
    result: null, // the shown image's answer from /api/generate or /api/discriminate
    image: null, // its decoded <img>
    maps: new Map(), // "net/layer" -> Float32Array (N*N), decoded once per result
    rows: new Map(), // "net/layer/cell" -> Float32Array (N) fetched per query
    query: null, // {x, y} in image pixels
    pinned: false,
    seq: 0,
    controller: null,
    timer: 0,
  };

  // ------------------------------------------------------------------ decoding
  const HALF = (() => {
    const table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const sign = h & 0x8000 ? -1 : 1;
      const exp = (h >> 10) & 31;
      const frac = h & 1023;
      table[h] = exp === 0 ? sign * frac * 2 ** -24
        : exp === 31 ? (frac ? NaN : sign * Infinity)
          : sign * (1 + frac / 1024) * 2 ** (exp - 15);
    }
    return table;
  })();

  function decode(b64, dtype) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    const view = new DataView(bytes.buffer);
    if (dtype === "float32") {
      const out = new Float32Array(bytes.length / 4);
      for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    const out = new Float32Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = HALF[view.getUint16(2 * i, true)];
    return out;
  }

  // matplotlib's "inferno" at 9 stops, interpolated to 256 colours
  const LUT = (() => {
    const stops = [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85],
      [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]];
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = (i / 255) * (stops.length - 1);
      const k = Math.min(Math.floor(t), stops.length - 2);
      const f = t - k;
      for (let c = 0; c < 3; c++) lut[3 * i + c] = stops[k][c] * (1 - f) + stops[k + 1][c] * f;
    }
    return lut;
  })();

  // ------------------------------------------------------------------ status
  function say(text, error = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", error);
  }

  async function api(path, options = {}) {
    const response = await fetch(path, options);
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = { error: `${response.status} ${response.statusText}` };
    }
    if (!response.ok) throw new Error(body.error || `${response.status}`);
    return body;
  }

  // ------------------------------------------------------------------ requests
  function className(label) {
    const names = state.info.class_names;
    return names ? `${label} \u00b7 ${names[label]}` : String(label);
  }

  function seedValue(input, required) {
    const text = input.value.trim();
    const ok = SEED_RE.test(text) && BigInt(text) <= SEED_MAX;
    const empty = text === "" && !required;
    input.setAttribute("aria-invalid", ok || empty ? "false" : "true");
    if (empty) return null;
    if (!ok) throw new Error(`${input.id} must be a whole number from 0 to ${SEED_MAX}`);
    return text;
  }

  function imageParams() {
    const params = new URLSearchParams();
    params.set("seed", seedValue($("seed"), true));
    if ($("truncation-on").checked) params.set("truncation", $("truncation").value);
    const seed2 = seedValue($("seed2"), false);
    $("mix").disabled = seed2 === null;
    if (seed2 !== null) {
      params.set("seed2", seed2);
      params.set("mix", $("mix").value);
    }
    if (state.info.num_classes > 0) params.set("class", $("class").value);
    return params;
  }

  function schedule(delay = 120) {
    clearTimeout(state.timer);
    state.timer = setTimeout(generate, delay);
  }

  async function generate() {
    let params;
    try {
      params = imageParams();
    } catch (e) {
      say(e.message, true);
      return;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const seq = ++state.seq;
    say("generating\u2026");
    try {
      const result = await api(`api/generate?${params}`, { signal: controller.signal });
      if (seq === state.seq) await show(result);
    } catch (e) {
      if (e.name !== "AbortError" && seq === state.seq) say(e.message, true);
    }
  }

  async function upload(file) {
    if (!file) return;
    if (!["image/png", "image/jpeg"].includes(file.type)) {
      say(`the critic takes PNG or JPEG images, not ${file.type || "this file"}`, true);
      return;
    }
    if (file.size > state.info.limits.upload_bytes) {
      say(`${file.name} is larger than ${state.info.limits.upload_bytes} bytes`, true);
      return;
    }
    const seq = ++state.seq;
    say(`reading ${file.name}\u2026`);
    try {
      const query = state.info.num_classes > 0 ? `?class=${$("class").value}` : "";
      const result = await api(`api/discriminate${query}`, {
        method: "POST", body: file, headers: { "Content-Type": file.type },
      });
      result.name = file.name;
      if (seq === state.seq) await show(result);
    } catch (e) {
      if (seq === state.seq) say(e.message, true);
    }
  }

  // ------------------------------------------------------------------ showing a result
  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("the image could not be decoded"));
      img.src = src;
    });
  }

  function layersOf(result) {
    const out = [];
    for (const net of ["generator", "discriminator"]) {
      if (result[net]) for (const layer of result[net].layers) out.push({ net, ...layer });
    }
    return out;
  }

  async function show(result) {
    const img = await loadImage(result.image);
    state.result = result;
    state.image = img;
    state.maps = new Map();
    state.rows = new Map();
    const canvas = $("image");
    canvas.width = result.size;
    canvas.height = result.size;
    canvas.getContext("2d").drawImage(img, 0, 0);
    const request = result.request;
    const labelled = request && request.class !== undefined;
    const name = request
      ? `fagan_seed${request.seed}${request.seed2 ? `_to${request.seed2}_${Number(request.mix).toFixed(2)}` : ""}` +
        `${labelled ? `_class${request.class}` : ""}.png`
      : `critic_${(result.name || "upload").replace(/\.[^.]*$/, "")}.png`;
    $("download").href = result.image;
    $("download").download = name;
    $("back").hidden = !result.upload;
    const d = result.discriminator;
    $("score").hidden = !d;
    if (d) {
      const score = d.score === null ? "not finite" : d.score.toFixed(4);
      $("score").textContent = `critic score D(x) = ${score} (raw logit, ` +
        `${result.upload ? "on the opened image" : "on this generated image"})`;
    }
    buildPanels(result);
    drawAll();
    const what = request ? `seed ${request.seed}` + (request.seed2
      ? ` \u2192 ${request.seed2} at ${Number(request.mix).toFixed(2)}` : "") +
      (request.truncation ? `, truncation ${request.truncation}` : "") +
      (labelled ? `, class ${className(request.class)}` : "")
      : `${result.name || "opened image"} as the critic sees it (${result.size}\u00d7${result.size})`;
    say(what);
    document.body.dataset.ready = String(state.seq);
  }

  function buildPanels(result) {
    for (const net of ["generator", "discriminator"]) {
      const box = $(net === "generator" ? "g-layers" : "d-layers");
      const title = $(net === "generator" ? "g-title" : "d-title");
      box.replaceChildren();
      title.hidden = !result[net];
      if (!result[net]) continue;
      for (const layer of result[net].layers) {
        const panel = document.createElement("div");
        panel.className = "panel";
        const view = document.createElement("div");
        view.className = "view";
        const canvas = document.createElement("canvas");
        canvas.width = PANEL_SIZE;
        canvas.height = PANEL_SIZE;
        canvas.dataset.net = net;
        canvas.dataset.layer = layer.name;
        const cell = document.createElement("div");
        cell.className = "cell";
        cell.hidden = true;
        view.append(canvas, cell);
        const titleLine = document.createElement("div");
        titleLine.className = "title";
        titleLine.textContent = `${layer.name} \u00b7 ${layer.kind}`;
        const meta = document.createElement("div");
        meta.className = "meta";
        meta.textContent = `${layer.grid[0]}\u00d7${layer.grid[1]} positions \u00b7 g = ` +
          `${layer.gamma.toPrecision(4)}`;
        const stats = document.createElement("div");
        stats.className = "stats";
        panel.append(view, titleLine, meta, stats);
        box.append(panel);
        layer.panel = { canvas, cell, stats };
      }
    }
  }

  // ------------------------------------------------------------------ attention rows
  function cellOf(layer, query, size) {
    return [Math.floor((query.y * layer.grid[0]) / size), Math.floor((query.x * layer.grid[1]) / size)];
  }

  function rowOf(layer, cell) {
    const n = layer.positions;
    const index = cell[0] * layer.grid[1] + cell[1];
    const key = `${layer.net}/${layer.name}`;
    if (layer.inline) {
      if (!state.maps.has(key)) state.maps.set(key, decode(layer.maps, state.result.dtype));
      return state.maps.get(key).subarray(index * n, (index + 1) * n);
    }
    const rowKey = `${key}/${index}`;
    if (state.rows.has(rowKey)) return state.rows.get(rowKey);
    if (!STATIC) fetchRow(layer, rowKey);
    return null;
  }

  async function fetchRow(layer, rowKey) {
    state.rows.set(rowKey, null);
    const result = state.result;
    const params = new URLSearchParams(result.upload ? { upload: result.upload } : result.request);
    params.set("net", layer.net);
    params.set("layer", layer.name);
    params.set("x", state.query.x);
    params.set("y", state.query.y);
    try {
      const answer = await api(`api/query?${params}`);
      if (state.result !== result) return;
      state.rows.set(rowKey, decode(answer.row, "float16"));
      drawAll();
    } catch (e) {
      state.rows.delete(rowKey);
      say(e.message, true);
    }
  }

  // ------------------------------------------------------------------ drawing
  function drawAll() {
    const result = state.result;
    if (!result) return;
    const size = result.size;
    const cursor = $("cursor");
    cursor.hidden = !state.query;
    if (state.query) {
      cursor.style.left = `${(100 * state.query.x) / size}%`;
      cursor.style.top = `${(100 * state.query.y) / size}%`;
      cursor.style.width = cursor.style.height = `${Math.max(100 / size, 1.2)}%`;
      cursor.classList.toggle("pinned", state.pinned);
      $("query-info").textContent = `query pixel x = ${state.query.x}, y = ${state.query.y}` +
        (state.pinned ? " (pinned: click the image to release)" : "");
    }
    for (const layer of layersOf(result)) drawPanel(layer, size);
  }

  function drawPanel(layer, size) {
    const { canvas, cell: box, stats } = layer.panel;
    const ctx = canvas.getContext("2d");
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(state.image, 0, 0, PANEL_SIZE, PANEL_SIZE);
    delete canvas.dataset.query;
    const [h, w] = layer.grid;
    const n = layer.positions;
    if (!state.query) {
      box.hidden = true;
      stats.textContent = `uniform would be ${(1 / n).toPrecision(3)}`;
      return;
    }
    const cell = cellOf(layer, state.query, size);
    box.hidden = false;
    box.style.left = `${(100 * cell[1]) / w}%`;
    box.style.top = `${(100 * cell[0]) / h}%`;
    box.style.width = `${100 / w}%`;
    box.style.height = `${100 / h}%`;
    const row = rowOf(layer, cell);
    if (!row) {
      stats.textContent = STATIC
        ? `${n} positions: too many to embed; run fagan explore for this layer`
        : "fetching\u2026";
      return;
    }
    let max = 0;
    let argmax = 0;
    let min = Infinity;
    for (let j = 0; j < n; j++) {
      if (row[j] > max) { max = row[j]; argmax = j; }
      if (row[j] < min) min = row[j];
    }
    const low = $("stretch").checked ? min : 0;
    const span = max - low || 1;
    const heat = document.createElement("canvas");
    heat.width = w;
    heat.height = h;
    const hctx = heat.getContext("2d");
    const pixels = hctx.createImageData(w, h);
    for (let j = 0; j < n; j++) {
      const v = Math.round(255 * Math.min(1, Math.max(0, (row[j] - low) / span)));
      pixels.data.set([LUT[3 * v], LUT[3 * v + 1], LUT[3 * v + 2], 255], 4 * j);
    }
    hctx.putImageData(pixels, 0, 0);
    ctx.globalAlpha = 0.62;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(heat, 0, 0, PANEL_SIZE, PANEL_SIZE);
    ctx.globalAlpha = 1;
    canvas.dataset.query = `${state.query.x},${state.query.y}`;
    stats.textContent = `cell ${cell[0]},${cell[1]} \u00b7 max p ${max.toPrecision(3)} at ` +
      `${Math.floor(argmax / w)},${argmax % w} \u00b7 uniform ${(1 / n).toPrecision(3)}`;
  }

  // ------------------------------------------------------------------ pointer
  function pointerQuery(event) {
    const rect = $("image").getBoundingClientRect();
    const size = state.result.size;
    const clamp = (v) => Math.min(size - 1, Math.max(0, v));
    return {
      x: clamp(Math.floor(((event.clientX - rect.left) / rect.width) * size)),
      y: clamp(Math.floor(((event.clientY - rect.top) / rect.height) * size)),
    };
  }

  function onMove(event) {
    if (!state.result || state.pinned) return;
    const q = pointerQuery(event);
    if (state.query && q.x === state.query.x && q.y === state.query.y) return;
    state.query = q;
    drawAll();
  }

  function onClick(event) {
    if (!state.result) return;
    state.pinned = !state.pinned;
    state.query = pointerQuery(event);
    drawAll();
  }

  // ------------------------------------------------------------------ set-up
  function describeModel(info) {
    const layers = info.layers;
    const g = layers.generator.length;
    const d = layers.discriminator ? layers.discriminator.length : null;
    return `${info.image_size}\u00d7${info.image_size} generator, latent size ${info.latent_size}, ` +
      `${g} attention layer${g === 1 ? "" : "s"}` +
      (info.num_classes ? `, ${info.num_classes} classes` : ", unconditional") +
      (d === null ? "; no critic loaded" : `; critic with ${d} attention layer${d === 1 ? "" : "s"}`) +
      (STATIC ? " \u00b7 exported page: the seeds computed at export" : "");
  }

  function randomSeed() {
    const words = crypto.getRandomValues(new Uint32Array(2));
    return ((BigInt(words[0] & 0x7fffffff) << 32n) | BigInt(words[1])).toString();
  }

  function setUpLive(info) {
    $("seed").addEventListener("input", () => schedule(300));
    $("seed2").addEventListener("input", () => schedule(300));
    $("random").addEventListener("click", () => {
      $("seed").value = randomSeed();
      schedule(0);
    });
    $("truncation-on").addEventListener("change", () => {
      $("truncation").disabled = !$("truncation-on").checked;
      $("truncation-value").textContent = $("truncation-on").checked
        ? Number($("truncation").value).toFixed(2) : "off";
      schedule(0);
    });
    $("truncation").addEventListener("input", () => {
      $("truncation-value").textContent = Number($("truncation").value).toFixed(2);
      schedule();
    });
    $("mix").addEventListener("input", () => {
      $("mix-value").textContent = Number($("mix").value).toFixed(2);
      schedule();
    });
    $("class").addEventListener("change", () => schedule(0));
    if (info.truncation !== null) {
      $("truncation-on").checked = true;
      $("truncation").disabled = false;
      $("truncation").value = info.truncation;
      $("truncation-value").textContent = Number(info.truncation).toFixed(2);
    }
    if (info.has_discriminator) {
      $("upload-row").hidden = false;
      $("upload").addEventListener("change", () => upload($("upload").files[0]));
      $("back").addEventListener("click", () => generate());
      const wrap = $("image-wrap");
      wrap.addEventListener("dragover", (e) => { e.preventDefault(); wrap.classList.add("drop"); });
      wrap.addEventListener("dragleave", () => wrap.classList.remove("drop"));
      wrap.addEventListener("drop", (e) => {
        e.preventDefault();
        wrap.classList.remove("drop");
        upload(e.dataTransfer.files[0]);
      });
    }
    return generate();
  }

  function setUpStatic(data) {
    for (const el of document.querySelectorAll(".live-only")) el.hidden = true;
    for (const el of document.querySelectorAll(".static-only")) el.hidden = false;
    const select = $("seed-select");
    const seeds = [];
    for (const result of data.results) {
      if (seeds.includes(result.request.seed)) continue;
      const option = document.createElement("option");
      option.value = String(seeds.length);
      seeds.push(result.request.seed);
      option.textContent = result.request.seed +
        (result.request.truncation ? ` (truncation ${result.request.truncation})` : "");
      select.append(option);
    }
    // a conditional generator's page holds each seed once per class it embedded
    const conditional = data.info.num_classes > 0;
    if (conditional) {
      const embedded = new Set(data.results.map((result) => String(result.request.class)));
      for (const option of [...$("class").options]) {
        if (!embedded.has(option.value)) option.remove();
      }
    }
    const picked = () => data.results.find((result) =>
      result.request.seed === seeds[Number(select.value)] &&
      (!conditional || String(result.request.class) === $("class").value));
    const showPicked = () => {
      state.seq++;
      return show(picked());
    };
    select.addEventListener("change", showPicked);
    if (conditional) $("class").addEventListener("change", showPicked);
    return showPicked();
  }

  async function start() {
    const data = STATIC ? JSON.parse(embedded.textContent) : null;
    try {
      state.info = STATIC ? data.info : await api("api/info");
    } catch (e) {
      say(`cannot reach the fagan explore server: ${e.message}`, true);
      return;
    }
    const info = state.info;
    $("model-info").textContent = describeModel(info);
    if (info.num_classes > 0) {
      $("class-row").hidden = false;
      for (let c = 0; c < info.num_classes; c++) {
        const option = document.createElement("option");
        option.value = String(c);
        option.textContent = className(c);
        $("class").append(option);
      }
      $("class").value = String(info.class ?? 0);
    }
    $("stretch").addEventListener("change", drawAll);
    const canvas = $("image");
    canvas.addEventListener("pointermove", onMove);
    canvas.addEventListener("click", onClick);
    await (STATIC ? setUpStatic(data) : setUpLive(info));
  }

  start();
})();
