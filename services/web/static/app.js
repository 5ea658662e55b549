// Know Your Bands page: pick or take a photo, optionally drag a crop, ask POST /api/v1/identify,
// then outline every object on the photo and show one card per band; or find bands by name
// (GET /api/v1/bands?q=). Plain JS, no build step.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const picture = $("picture");
  const figure = $("photo");
  const overlay = $("overlay");
  const cropBox = $("crop-box");
  const message = $("message");
  const searchButton = $("search");
  const wholeButton = $("whole");
  const results = $("results");
  const cards = $("cards");
  const tokenForm = $("token-form");
  const bandResults = $("band-results");
  const bandCards = $("band-cards");
  const SVG = "http://www.w3.org/2000/svg";
  // Photos are searched at 1024 px (longest side); sending more than 1600 px only costs upload time.
  const MAX_SIDE = 1600;
  const COLOURS = ["#ffd23f", "#4dd0e1", "#ff8a65", "#aed581", "#ce93d8", "#90caf9", "#f48fb1", "#fff59d"];
  const FIELDS = [
    ["country", "Country"], ["genre", "Genre"], ["themes", "Themes"], ["status", "Status"], ["formed_in", "Formed in"],
    ["label", "Label"], ["members", "Members"], ["similar_artists", "Similar artists"], ["links", "Links"],
  ];

  let photo = null;   // {blob, width, height} of what is sent; coordinates are in its pixels
  let crop = null;    // [x1, y1, x2, y2] in photo pixels, or null for the whole photo
  let objectUrl = null;
  window.kybTimings = [];  // ms from sending a photo to its answer on screen (read by the tests)

  function say(text, kind = "info", detail = "") {
    message.className = `message ${kind}`;
    message.textContent = text;
    if (detail) {
      const small = document.createElement("span");
      small.className = "detail";
      small.textContent = detail;
      message.append(small);
    }
  }

  function clearAnswer() {
    overlay.replaceChildren();
    cards.replaceChildren();
    results.hidden = true;
  }

  function loadImage(url) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("not an image"));
      img.src = url;
    });
  }

  // A decodable photo larger than MAX_SIDE is re-encoded smaller; anything else goes as it is.
  async function prepare(file) {
    const url = URL.createObjectURL(file);
    let img;
    try {
      img = await loadImage(url);
    } catch {
      URL.revokeObjectURL(url);
      return null;  // the browser cannot show it: let the server say what is wrong with it
    }
    const side = Math.max(img.naturalWidth, img.naturalHeight);
    if (side <= MAX_SIDE) return { blob: file, url, width: img.naturalWidth, height: img.naturalHeight };
    const scale = MAX_SIDE / side;
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(img.naturalWidth * scale);
    canvas.height = Math.round(img.naturalHeight * scale);
    canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    URL.revokeObjectURL(url);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    return { blob, url: URL.createObjectURL(blob), width: canvas.width, height: canvas.height };
  }

  async function choose(input) {
    const file = input.files && input.files[0];
    input.value = "";  // choosing the same file again still fires "change"
    if (!file) return;
    clearAnswer();
    setCrop(null);
    const prepared = await prepare(file);
    if (!prepared) {
      $("stage").hidden = true;
      photo = null;
      await identify(file);  // not something the browser can show: the server's verdict is the message
      return;
    }
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = prepared.url;
    photo = prepared;
    picture.src = prepared.url;
    picture.alt = `Your photo: ${file.name}`;
    overlay.setAttribute("viewBox", `0 0 ${photo.width} ${photo.height}`);
    $("stage").hidden = false;
    $("steps").hidden = true;
    message.className = "message";
    message.textContent = "";
    searchButton.focus();
  }

  // ------------------------------------------------------------------ crop by dragging
  function toPhoto(event) {
    const rect = picture.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * photo.width;
    const y = ((event.clientY - rect.top) / rect.height) * photo.height;
    return [Math.min(Math.max(x, 0), photo.width), Math.min(Math.max(y, 0), photo.height)];
  }

  function setCrop(box) {
    crop = box;
    cropBox.hidden = !box;
    wholeButton.hidden = !box;
    searchButton.textContent = box ? "Identify in the box" : "Identify";
    if (!box) return;
    const [x1, y1, x2, y2] = box;
    Object.assign(cropBox.style, {
      left: `${(x1 / photo.width) * 100}%`, top: `${(y1 / photo.height) * 100}%`,
      width: `${((x2 - x1) / photo.width) * 100}%`, height: `${((y2 - y1) / photo.height) * 100}%`,
    });
  }

  let dragStart = null;
  figure.addEventListener("pointerdown", (event) => {
    if (!photo || event.button !== 0) return;
    figure.setPointerCapture(event.pointerId);
    dragStart = toPhoto(event);
    event.preventDefault();
  });
  figure.addEventListener("pointermove", (event) => {
    if (!dragStart) return;
    const [x, y] = toPhoto(event);
    const [x0, y0] = dragStart;
    setCrop([Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)]);
  });
  figure.addEventListener("pointerup", () => {
    dragStart = null;
    // A tap (or a sliver) is not a crop: a box needs some room to hold a logo or a cover.
    if (crop && (crop[2] - crop[0] < 16 || crop[3] - crop[1] < 16)) setCrop(null);
  });

  // ------------------------------------------------------------------ asking the server
  const FAILURES = {
    400: "That file is not a photo Know Your Bands can read. Use a JPEG, PNG or WebP photo.",
    401: "This server needs an access token.",
    413: "That photo is too large for the server. Try a smaller one.",
    503: "The search service is down right now. Please try again in a minute.",
    504: "The search took too long. Please try again.",
  };

  function authHeaders(headers = {}) {
    const token = sessionStorage.getItem("kyb-token");
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  // Errors are RFC 9457 problem details: the status picks the sentence, `detail` is the server's line.
  function failed(response, problem) {
    const detail = problem.detail || `HTTP ${response.status}`;
    say(FAILURES[response.status] || "Something went wrong on the server.", "error", detail);
    tokenForm.hidden = response.status !== 401;
    if (response.status === 401) $("token").focus();
  }

  async function identify(blob) {
    searchButton.disabled = true;
    searchButton.setAttribute("aria-busy", "true");
    say("Looking for bands…");
    clearAnswer();
    const query = crop ? `?crop=${crop.map((v) => Math.round(v)).join(",")}` : "";
    const headers = authHeaders({ "Content-Type": blob.type || "application/octet-stream" });
    performance.mark("kyb:send");
    try {
      let response;
      try {
        response = await fetch(`/api/v1/identify${query}`, { method: "POST", body: blob, headers });
      } catch {
        say("Cannot reach Know Your Bands. Check your connection and try again.", "error");
        return;
      }
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        failed(response, body);
        return;
      }
      render(body);
      // The answer counts as shown once the browser has painted it.
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      performance.mark("kyb:rendered");
      const measure = performance.measure("kyb:identify", "kyb:send", "kyb:rendered");
      window.kybTimings.push(measure.duration);
    } finally {
      searchButton.disabled = false;
      searchButton.removeAttribute("aria-busy");
    }
  }

  // ------------------------------------------------------------------ showing the answer
  function el(tag, attrs = {}, text = "") {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    if (text) node.textContent = text;
    return node;
  }

  function drawOutlines(objects, width, height) {
    overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const size = Math.max(14, Math.round(Math.max(width, height) / 28));
    objects.forEach((obj, i) => {
      const colour = COLOURS[i % COLOURS.length];
      const polygon = document.createElementNS(SVG, "polygon");
      polygon.setAttribute("points", obj.outline.map(([x, y]) => `${x},${y}`).join(" "));
      polygon.setAttribute("class", "outline");
      polygon.setAttribute("stroke", colour);
      polygon.setAttribute("fill", colour);
      const label = document.createElementNS(SVG, "text");
      const [x, y] = obj.outline[0];
      label.setAttribute("x", Math.max(x, 2));
      label.setAttribute("y", Math.max(y - size * 0.3, size));
      label.setAttribute("font-size", size);
      label.setAttribute("fill", colour);
      label.setAttribute("class", "label");
      label.textContent = `${i + 1} ${obj.band ? obj.band.name : "?"}`;
      overlay.append(polygon, label);
      // Keep the label inside the photo: shift it left when it would run off the right edge.
      const overflow = Math.max(x, 2) + label.getComputedTextLength() - (width - 2);
      if (overflow > 0) label.setAttribute("x", Math.max(2, Math.max(x, 2) - overflow));
    });
  }

  function value(field, band) {
    const data = band[field];
    if (data === null || data === undefined || data === "" || (Array.isArray(data) && !data.length)) return null;
    if (field === "links") {
      const list = el("ul");
      for (const href of data) {
        const item = el("li");
        const link = el("a", { href, rel: "noopener noreferrer", target: "_blank" }, href.replace(/^https?:\/\//, ""));
        item.append(link);
        list.append(item);
      }
      return list;
    }
    return document.createTextNode(Array.isArray(data) ? data.join(", ") : String(data));
  }

  function logo(band, colour) {
    const initials = (band.name || "?").split(/\s+/).map((w) => w[0]).join("").slice(0, 2).toUpperCase();
    const fallback = el("div", { class: "logo", "aria-hidden": "true" }, initials);
    fallback.style.setProperty("--c", colour);
    if (!band.logo_url) return fallback;
    const img = el("img", { class: "logo", src: band.logo_url, alt: `${band.name} logo`, loading: "lazy" });
    img.addEventListener("error", () => img.replaceWith(fallback), { once: true });
    return img;
  }

  // A band's card: logo, name, then what the catalog knows (country, genre, ...) and similar bands.
  function bandCard(band, colour, found = null, similarBands = []) {
    const item = el("li", { class: "card" });
    item.style.setProperty("--c", colour);
    item.append(logo(band, colour), el("h3", {}, band.name));
    if (found) item.append(found);
    const list = el("dl");
    for (const [field, title] of FIELDS) {
      const shown = value(field, band);
      if (!shown) continue;
      const dd = el("dd");
      dd.append(shown);
      list.append(el("dt", {}, title), dd);
    }
    if (similarBands && similarBands.length) {
      const dd = el("dd", { class: "similar" });
      for (const other of similarBands) {
        const button = el("button", { type: "button", class: "link" }, other.name);
        button.title = [other.genre, other.country].filter(Boolean).join(" · ");
        button.addEventListener("click", () => showBand(other.band_id));
        dd.append(button);
      }
      list.append(el("dt", {}, "Similar bands"), dd);
    }
    if (list.childElementCount) item.append(list);
    return item;
  }

  function card(group) {
    const { band, items } = group;
    const colour = COLOURS[items[0].index % COLOURS.length];
    const found = el("p", { class: "found" });
    for (const { obj, index } of items) {
      const line = el("span", {});
      line.append(el("span", { class: "badge", "aria-label": `object ${index + 1}` }, String(index + 1)));
      const kind = obj.kind === "logo" ? "Logo" : "Album cover";
      const what = obj.album ? `${obj.album.title}${obj.album.year ? ` (${obj.album.year})` : ""}` : kind;
      line.append(document.createTextNode(`${what} · ${obj.inliers} matching points `));
      found.append(line);
    }
    return bandCard(band, colour, found, items[0].obj.similar_bands);
  }

  function render(answer) {
    const objects = answer.objects;
    drawOutlines(objects, answer.image.width, answer.image.height);
    setCrop(null);
    const groups = new Map();
    objects.forEach((obj, index) => {
      const band = obj.band || { band_id: obj.matches[0]?.band_id || `object-${index}`, name: "Unknown band" };
      if (!groups.has(band.band_id)) groups.set(band.band_id, { band, items: [] });
      groups.get(band.band_id).items.push({ obj, index });
    });
    cards.replaceChildren(...[...groups.values()].map(card));
    results.hidden = !objects.length;
    const seconds = ((answer.timings_ms && answer.timings_ms.total) || 0) / 1000;
    const partial = answer.partial ? " Part of the catalog did not answer: some bands may be missing." : "";
    if (!objects.length) {
      say(`No band found in this photo. Try a closer, sharper shot, or crop to one cover.${partial}`, "info");
    } else {
      const n = objects.length;
      say(`Found ${n} object${n > 1 ? "s" : ""} from ${groups.size} band${groups.size > 1 ? "s" : ""} ` +
          `in ${seconds.toFixed(1)} s.${partial}`, "info");
    }
  }

  // ------------------------------------------------------------------ finding a band by name
  async function searchBands(query) {
    say("Looking up bands…");
    let response;
    try {
      const params = new URLSearchParams({ q: query, limit: "10" });
      for (const [name, id] of [["country", "band-country"], ["status", "band-status"], ["formed", "band-formed"]]) {
        const text = $(id).value.trim();
        if (text) params.set(name, text);
      }
      response = await fetch(`/api/v1/bands?${params}`, { headers: authHeaders() });
    } catch {
      say("Cannot reach Know Your Bands. Check your connection and try again.", "error");
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      failed(response, body);
      return;
    }
    const bands = body.bands || [];
    bandCards.replaceChildren(...bands.map((band, i) => bandCard(band, COLOURS[i % COLOURS.length])));
    bandResults.hidden = !bands.length;
    const n = bands.length;
    const notice = body.notice ? ` ${body.notice}` : "";
    say((n ? `${n} band${n > 1 ? "s" : ""} found for “${query}”.` : `No band found for “${query}”.`) + notice, "info");
  }

  // One band's card with its albums' count and similar bands (GET /api/v1/bands/{id}).
  async function showBand(bandId) {
    let response;
    try {
      response = await fetch(`/api/v1/bands/${encodeURIComponent(bandId)}`, { headers: authHeaders() });
    } catch {
      say("Cannot reach Know Your Bands. Check your connection and try again.", "error");
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      failed(response, body);
      return;
    }
    bandCards.replaceChildren(bandCard(body.band, COLOURS[0], null, body.similar_bands));
    bandResults.hidden = false;
    say(`${body.band.name}: ${(body.similar_bands || []).length} similar bands.`, "info");
  }

  // ------------------------------------------------------------------ wiring
  $("band-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("band-query").value.trim();
    if (query) searchBands(query);
  });
  $("camera").addEventListener("change", (event) => choose(event.target));
  $("file").addEventListener("change", (event) => choose(event.target));
  searchButton.addEventListener("click", () => photo && identify(photo.blob));
  wholeButton.addEventListener("click", () => setCrop(null));
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("kyb-token", $("token").value.trim());
    tokenForm.hidden = true;
    if (photo) identify(photo.blob);
    else if ($("band-query").value.trim()) searchBands($("band-query").value.trim());
  });
})();
