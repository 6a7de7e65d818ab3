// Typesets the formulas that pymdownx.arithmatex (generic mode) leaves as \( … \) and \[ … \],
// with the KaTeX copy vendored beside this file; again after each instant-navigation page load.
function renderMath() {
  renderMathInElement(document.body, {
    delimiters: [
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
    ],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath);
} else {
  document.addEventListener("DOMContentLoaded", renderMath);
}
