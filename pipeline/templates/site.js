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
    var bar = tabs[0].parentNode;
    var fromHash = function () {  // a link to a loss (#huber) shows it, with the tabs in view
      var name = "";
      try { name = decodeURIComponent(window.location.hash.slice(1)); } catch (e) { name = ""; }
      if (!show(name)) { return false; }
      bar.scrollIntoView({block: "start"});
      return true;
    };
    if (fromHash()) {  // the browser scrolls to the section itself once loaded: to the tabs instead
      window.addEventListener("load", function () { window.setTimeout(function () { bar.scrollIntoView({block: "start"}); }, 0); });
    } else {
      show(tabs[0].getAttribute("data-tab"));
    }
    window.addEventListener("hashchange", fromHash);
    tabs.forEach(function (tab) {  // a click switches in place (and the back button returns)
      tab.addEventListener("click", function (event) {
        var name = tab.getAttribute("data-tab");
        event.preventDefault();
        try { window.history.pushState(null, "", "#" + encodeURIComponent(name)); } catch (e) { /* the hash stays */ }
        show(name);
      });
    });
    window.addEventListener("popstate", fromHash);
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
