// The theme chosen with the page's toggle, set before the first paint (a module would run
// after it, and the page would flash in the system's theme). Without a choice: the system's.
(() => {
  const chosen = localStorage.getItem("ganglion.theme");
  if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
})();
