// durable console: optional enhancements; every page works without them.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Select all the dead letters of the page.
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll("input.select[name=sel]").forEach(function (box) { box.checked = all.checked; });
    });
  }
});
