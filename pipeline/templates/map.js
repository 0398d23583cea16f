// The map page's script (inlined into map.html). Plain JS, no library: it draws every photo
// of PHOTOCLUST_MAP (map/points.js) at its (x, y) as a cell of a thumbnail atlas, or as a dot
// when the thumbnails would be too small or too many, only what is in view, once per
// animation frame. window.photoclustMap exposes hitTest(x, y) and friends for the tests.
(function () {
  "use strict";
  var MIN_THUMB = 20;      // px on screen: smaller thumbnails are drawn as dots
  var MAX_THUMB = 96;      // px on screen: thumbnails stop growing when zooming in further
  var MAX_DRAWN = 6000;    // more thumbnails than this to draw: dots instead
  var BACKGROUND = "#202124";
  var PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#aec7e8", "#ffbb78", "#98df8a",
                 "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"];

  // points.js declares `const PHOTOCLUST_MAP`: a global binding, not a property of window.
  var data = typeof PHOTOCLUST_MAP === "undefined" ? null : PHOTOCLUST_MAP;
  var canvas = document.getElementById("map");
  var message = document.getElementById("message");
  if (!data || !data.x) {
    message.hidden = false;
    message.textContent = "The map's data (map/points.js) is missing: run `make sheets` " +
      "(python -m pipeline render) again.";
    return;
  }
  var ctx = canvas.getContext("2d");
  var tip = document.getElementById("tip");
  var select = document.getElementById("loss");
  var legend = document.getElementById("legend");
  var n = data.x.length;
  var cell = data.cell;
  var xs = Float64Array.from(data.x), ys = Float64Array.from(data.y);
  document.getElementById("count").textContent = n + (n === 1 ? " photo" : " photos");

  // Thumbnails lie in world units ([0, 1] box); about as large as the photos' spacing.
  var thumbWorld = Math.min(0.08, Math.max(0.002, 1.6 / Math.sqrt(Math.max(n, 1))));
  var view = {cx: 0.5, cy: 0.5, scale: 1};
  var width = 0, height = 0, ratio = 1;
  var loss = data.losses.length ? data.losses[0] : null;
  var hovered = -1, pending = false, drawnMode = "", drawnCount = 0;
  var visible = new Int32Array(n), shown = new Int32Array(n);

  var atlases = data.atlases.map(function (src) {
    var image = new Image();
    image.onload = requestDraw;
    image.src = src;
    return image;
  });

  function colour(cluster) {
    if (cluster < 0) { return "#888888"; }
    if (cluster < PALETTE.length) { return PALETTE[cluster]; }
    return "hsl(" + ((cluster * 137.508) % 360).toFixed(1) + ", 65%, 60%)";
  }

  function clusterOf(i) { return loss === null ? -1 : data.cluster[loss][i]; }

  function resize() {
    ratio = window.devicePixelRatio || 1;
    width = canvas.clientWidth || window.innerWidth;
    height = canvas.clientHeight || window.innerHeight;
    canvas.width = Math.max(1, Math.round(width * ratio));
    canvas.height = Math.max(1, Math.round(height * ratio));
    requestDraw();
  }

  function fit() {
    view.cx = 0.5; view.cy = 0.5;
    view.scale = Math.max(1, Math.min(width, height - 40) * 0.9);
    requestDraw();
  }

  function toScreen(i) {
    return [(xs[i] - view.cx) * view.scale + width / 2, (ys[i] - view.cy) * view.scale + height / 2];
  }

  function thumbSize() { return Math.min(MAX_THUMB, thumbWorld * view.scale); }

  // What to draw for the current view: the photos in view, in drawing order (later on top).
  // Thumbnails when they are large enough: then a photo whose centre falls in a screen cell
  // (0.4 thumbnail wide) that a photo drawn above it already took is left out, since it would
  // be all but hidden; this bounds the overdraw however dense the map. Dots otherwise, or when
  // more than MAX_DRAWN thumbnails would remain.
  function plan() {
    var size = thumbSize(), margin = size;
    var left = view.cx - (width / 2 + margin) / view.scale, right = view.cx + (width / 2 + margin) / view.scale;
    var top = view.cy - (height / 2 + margin) / view.scale, bottom = view.cy + (height / 2 + margin) / view.scale;
    var count = 0, i, k;
    for (i = 0; i < n; i++) {
      var x = xs[i], y = ys[i];
      if (x >= left && x <= right && y >= top && y <= bottom) { visible[count++] = i; }
    }
    if (size < MIN_THUMB) { return {mode: "dots", size: size, list: visible, count: count}; }
    var step = Math.max(4, size * 0.4);
    var columns = Math.ceil((width + 2 * margin) / step) + 1, rows = Math.ceil((height + 2 * margin) / step) + 1;
    var taken = new Uint8Array(columns * rows), kept = 0;
    for (k = count - 1; k >= 0; k--) {  // topmost first
      i = visible[k];
      var p = toScreen(i);
      var c = Math.floor((p[0] + margin) / step) + columns * Math.floor((p[1] + margin) / step);
      if (!taken[c]) { taken[c] = 1; shown[kept++] = i; }
    }
    if (kept > MAX_DRAWN) { return {mode: "dots", size: size, list: visible, count: count}; }
    shown.subarray(0, kept).reverse();  // back to drawing order
    return {mode: "thumbnails", size: size, list: shown, count: kept};
  }

  function draw() {
    pending = false;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, width, height);
    var now = plan(), size = now.size, list = now.list;
    var i, k, p;
    if (now.mode === "thumbnails") {
      var half = size / 2, frame = Math.max(1, Math.min(3, size / 16));
      ctx.imageSmoothingEnabled = size > cell;
      for (k = 0; k < now.count; k++) {
        i = list[k];
        p = toScreen(i);
        ctx.fillStyle = colour(clusterOf(i));
        ctx.fillRect(p[0] - half - frame, p[1] - half - frame, size + 2 * frame, size + 2 * frame);
        var atlas = atlases[data.atlas[i]];
        if (atlas && atlas.complete && atlas.naturalWidth) {
          var c = data.cell_index[i];
          ctx.drawImage(atlas, (c % data.grid) * cell, Math.floor(c / data.grid) * cell, cell, cell,
                        p[0] - half, p[1] - half, size, size);
        }
      }
    } else {
      var r = Math.max(1.5, Math.min(4, size / 4));
      var groups = {};
      for (k = 0; k < now.count; k++) {
        i = list[k];
        var key = clusterOf(i);
        (groups[key] = groups[key] || []).push(i);
      }
      Object.keys(groups).forEach(function (key) {
        ctx.fillStyle = colour(Number(key));
        ctx.beginPath();
        groups[key].forEach(function (j) {
          var q = toScreen(j);
          ctx.rect(q[0] - r, q[1] - r, 2 * r, 2 * r);
        });
        ctx.fill();
      });
    }
    drawnMode = now.mode;
    drawnCount = now.count;
    if (hovered >= 0) {
      p = toScreen(hovered);
      var s = drawnMode === "thumbnails" ? size / 2 + 4 : 6;
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 2;
      ctx.strokeRect(p[0] - s, p[1] - s, 2 * s, 2 * s);
    }
  }

  function requestDraw() {
    if (!pending) {
      pending = true;
      window.requestAnimationFrame(draw);
    }
  }

  // The photo under canvas position (x, y) in CSS pixels: the topmost thumbnail drawn there,
  // or in dot mode the nearest dot within 6 pixels; -1 when none.
  function pointAt(x, y) {
    var now = plan(), list = now.list;
    var k, i, p;
    if (now.mode === "thumbnails") {
      var half = now.size / 2 + 1;
      for (k = now.count - 1; k >= 0; k--) {
        i = list[k];
        p = toScreen(i);
        if (Math.abs(p[0] - x) <= half && Math.abs(p[1] - y) <= half) { return i; }
      }
      return -1;
    }
    var best = -1, bestDistance = 36;
    for (k = 0; k < now.count; k++) {
      i = list[k];
      p = toScreen(i);
      var d = (p[0] - x) * (p[0] - x) + (p[1] - y) * (p[1] - y);
      if (d <= bestDistance) { best = i; bestDistance = d; }
    }
    return best;
  }

  function link(i) { return data.photos + data.href[i]; }

  function hitTest(x, y) {
    var i = pointAt(x, y);
    return i < 0 ? null : link(i);
  }

  function showLegend() {
    legend.textContent = "";
    if (loss === null) { return; }
    var sizes = {};
    data.cluster[loss].forEach(function (c) { sizes[c] = (sizes[c] || 0) + 1; });
    Object.keys(sizes).map(Number).sort(function (a, b) { return a - b; }).forEach(function (c) {
      var item = document.createElement("span");
      var chip = document.createElement("i");
      chip.style.background = colour(c);
      item.appendChild(chip);
      item.appendChild(document.createTextNode((c < 0 ? "no cluster" : "cluster " + c) + " (" + sizes[c] + ")"));
      legend.appendChild(item);
    });
  }

  data.losses.forEach(function (name) {
    var option = document.createElement("option");
    option.value = name;
    option.textContent = name + " (k = " + data.k[name] + ")";
    select.appendChild(option);
  });
  select.disabled = data.losses.length === 0;
  select.addEventListener("change", function () {
    loss = select.value;
    showLegend();
    requestDraw();
  });

  // Zoom about the cursor, pan by dragging, open on a click that did not drag.
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var rect = canvas.getBoundingClientRect();
    var x = event.clientX - rect.left, y = event.clientY - rect.top;
    var wx = view.cx + (x - width / 2) / view.scale, wy = view.cy + (y - height / 2) / view.scale;
    var unit = event.deltaMode === 1 ? 33 : event.deltaMode === 2 ? 400 : 1;
    var factor = Math.exp(-event.deltaY * unit * 0.0015);
    view.scale = Math.min(1e6, Math.max(10, view.scale * factor));
    view.cx = wx - (x - width / 2) / view.scale;
    view.cy = wy - (y - height / 2) / view.scale;
    hovered = pointAt(x, y);
    requestDraw();
  }, {passive: false});

  var drag = null;
  canvas.addEventListener("pointerdown", function (event) {
    drag = {x: event.clientX, y: event.clientY, cx: view.cx, cy: view.cy, moved: false};
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", function (event) {
    var rect = canvas.getBoundingClientRect();
    var x = event.clientX - rect.left, y = event.clientY - rect.top;
    if (drag) {
      var dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; canvas.classList.add("dragging"); }
      if (drag.moved) {
        view.cx = drag.cx - dx / view.scale;
        view.cy = drag.cy - dy / view.scale;
        tip.style.display = "none";
        requestDraw();
        return;
      }
    }
    var i = pointAt(x, y);
    if (i !== hovered) { hovered = i; requestDraw(); }
    canvas.classList.toggle("over", i >= 0);
    if (i < 0) { tip.style.display = "none"; return; }
    tip.textContent = data.name[i];
    tip.style.display = "block";
    tip.style.left = Math.min(x + 14, Math.max(0, width - tip.offsetWidth - 4)) + "px";
    tip.style.top = Math.min(y + 16, height - 24) + "px";
  });
  canvas.addEventListener("pointerup", function (event) {
    var wasDrag = drag && drag.moved;
    drag = null;
    canvas.classList.remove("dragging");
    if (wasDrag) { return; }
    var rect = canvas.getBoundingClientRect();
    var target = hitTest(event.clientX - rect.left, event.clientY - rect.top);
    if (target !== null) { window.open(target, "_blank"); }
  });
  canvas.addEventListener("pointerleave", function () {
    tip.style.display = "none";
    if (hovered >= 0) { hovered = -1; requestDraw(); }
  });
  canvas.addEventListener("dblclick", fit);
  window.addEventListener("resize", resize);
  window.addEventListener("keydown", function (event) {
    if (event.target !== document.body) { return; }
    if (event.key === "0") { fit(); }
    var factor = event.key === "+" || event.key === "=" ? 1.25 : event.key === "-" ? 0.8 : 0;
    if (factor) { view.scale = Math.min(1e6, Math.max(10, view.scale * factor)); requestDraw(); }
  });

  resize();
  fit();
  showLegend();

  // For the tests and for anyone scripting the page.
  window.photoclustMap = {
    count: n,
    hitTest: hitTest,
    pointAt: pointAt,
    link: link,
    screenOf: function (i) { return toScreen(i); },
    drawn: function () { var now = plan(); return Array.from(now.list.subarray(0, now.count)); },
    drawNow: function () { var start = performance.now(); draw(); return performance.now() - start; },
    state: function () {
      return {mode: drawnMode, drawn: drawnCount, scale: view.scale, size: thumbSize(), minThumb: MIN_THUMB, loss: loss,
              atlasesLoaded: atlases.filter(function (a) { return a.complete && a.naturalWidth > 0; }).length,
              atlases: atlases.length};
    },
    zoom: function (factor) { view.scale = Math.min(1e6, Math.max(10, view.scale * factor)); draw(); },
    setLoss: function (name) { select.value = name; loss = name; showLegend(); draw(); }
  };
})();
