(function () {
  "use strict";
  // The loss switch of the overview: one loss at a time. Without JavaScript every section
  // stays visible and the tabs are plain links to them.
  var tabs = document.querySelectorAll("nav.tabs a[data-tab]");
  if (tabs.length) {
    var show = function (name) {
      var found = false;
      tabs.forEach(function (tab) { if (tab.getAttribute("data-tab") === name) { found = true; } });
      if (!found) { return false; }
      tabs.forEach(function (tab) {
        var mine = tab.getAttribute("data-tab") === name;
        tab.setAttribute("aria-selected", mine ? "true" : "false");
        var panel = document.getElementById(tab.getAttribute("data-tab"));
        if (panel) { panel.hidden = !mine; }
      });
      return true;
    };
    var fromHash = function () {
      var name = "";
      try { name = decodeURIComponent(window.location.hash.slice(1)); } catch (e) { name = ""; }
      return show(name);
    };
    if (!fromHash()) { show(tabs[0].getAttribute("data-tab")); }
    window.addEventListener("hashchange", fromHash);
  }

  // Cluster pages: left/right arrows or k/j go to the previous/next cluster (the page's
  // rel="prev" and rel="next" links).
  var keys = { ArrowRight: "next", j: "next", ArrowLeft: "prev", k: "prev" };
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) { return; }
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName || ""))) { return; }
    var rel = keys[event.key];
    var link = rel && document.querySelector('a[rel~="' + rel + '"]');
    if (link) {
      event.preventDefault();
      window.location.href = link.href;
    }
  });
}());
