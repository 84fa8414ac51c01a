// Code in an answer: highlighted by the vendored highlight.js (vendor/README.md), and a Copy
// button on each block and each message. Highlighting rebuilds a block from its text only.
import hljs from "./highlight.min.js";

// Autodetection of an unlabelled block costs a pass per language: only small ones get it.
const AUTODETECT_MAX = 5000;
const HIGHLIGHT_MAX = 100000; // a bigger block stays plain: it would hold the page up

hljs.configure({ ignoreUnescapedHTML: true, throwUnescapedHTML: false });

function languageOf(code) {
  const m = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
  return m ? m[1] : null;
}

function highlight(code) {
  const text = code.textContent;
  if (text.length > HIGHLIGHT_MAX) return;
  const lang = languageOf(code);
  let result;
  if (lang) {
    if (!hljs.getLanguage(lang)) return; // not one of the common languages: stays plain
    result = hljs.highlight(text, { language: lang, ignoreIllegals: true });
  } else if (text.length <= AUTODETECT_MAX) {
    result = hljs.highlightAuto(text);
    if (result.relevance < 5) return; // a guess too weak to colour by
  } else {
    return;
  }
  code.innerHTML = result.value; // hljs escapes the text; only its <span class> are added
  code.classList.add("hljs");
  if (result.language) code.dataset.language = result.language;
}

// A button that copies what text() gives, and says so for a moment. Its words are drawn
// by CSS (data-state), so a message's text stays what was said, without "Copy" in it.
export function copyButton(label, text) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "copy secondary";
  b.setAttribute("aria-label", label);
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text());
      b.dataset.state = "copied";
    } catch {
      b.dataset.state = "failed"; // no clipboard outside https and localhost
    }
    setTimeout(() => { delete b.dataset.state; }, 1500);
  });
  return b;
}

// Every fenced block of a rendered message: highlighted, with its own Copy button.
export function decorateCode(body) {
  for (const pre of body.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    if (!code || pre.parentElement.classList.contains("code-block")) continue;
    const source = code.textContent.replace(/\n$/, ""); // markdown-it ends each block so
    highlight(code);
    const wrap = document.createElement("div");
    wrap.className = "code-block";
    pre.replaceWith(wrap);
    wrap.append(copyButton("Copy code", () => source), pre);
  }
}
