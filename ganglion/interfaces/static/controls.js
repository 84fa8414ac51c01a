// The page's own controls: the theme toggle (kept in localStorage), Log out, and the keyboard
// shortcuts (Esc stops, Ctrl+Shift+O starts a new chat). app.js says what each one does.
const THEME_KEY = "ganglion.theme"; // "light" or "dark"; absent: the system's (theme.js)
const $ = (id) => document.getElementById(id);
const root = document.documentElement;
const dark = matchMedia("(prefers-color-scheme: dark)");

function shownTheme() {
  return root.dataset.theme || (dark.matches ? "dark" : "light");
}

function labelToggle(button) {
  const other = shownTheme() === "dark" ? "light" : "dark";
  button.setAttribute("aria-label", `Switch to the ${other} theme`);
  button.title = `Switch to the ${other} theme`;
  button.dataset.shown = shownTheme();
}

function initTheme() {
  const button = $("theme");
  labelToggle(button);
  button.addEventListener("click", () => {
    const next = shownTheme() === "dark" ? "light" : "dark";
    root.dataset.theme = next;
    localStorage.setItem(THEME_KEY, next);
    labelToggle(button);
  });
  dark.addEventListener("change", () => labelToggle(button)); // followed while none chosen
}

// actions: { stop(): bool (false when nothing runs), newChat(), logOut() }
export function initControls(actions) {
  initTheme();
  $("log-out").addEventListener("click", actions.logOut);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !e.isComposing) {
      const drawer = $("sidebar");
      if (drawer.classList.contains("open")) $("close-sidebar").click();
      else if (actions.stop()) e.preventDefault();
    } else if (e.ctrlKey && e.shiftKey && !e.altKey && e.code === "KeyO") {
      e.preventDefault(); // the browser's bookmark manager otherwise
      actions.newChat();
    }
  });
}
