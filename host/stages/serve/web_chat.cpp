// The web chat page: plain HTML, CSS and JavaScript against the server's own
// /v1/chat/completions (streamed), no build step. Model picker, multi-turn chat, stop,
// regenerate, clear, parameters; "side by side" sends one prompt to two models and records a vote
// (POST /v1/votes, kept in the conversation log); "anonymous battle" draws the two models at random
// and names them only after the vote (Chatbot Arena's battle mode; `vhost arena report` rates them).
#include "stages/serve/web_chat.hpp"

namespace vhost::host {

const char* web_chat_html() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vhost chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:0;display:flex;flex-direction:column;height:100vh;background:#f6f6f8}
header{display:flex;gap:.6em;align-items:center;padding:.5em 1em;background:#223;color:#fff;flex-wrap:wrap}
header label{font-size:.85em}
header input{width:4.5em}
main{flex:1;display:flex;gap:1em;overflow:hidden;padding:1em}
.pane{flex:1;overflow-y:auto;background:#fff;border-radius:8px;padding:1em;box-shadow:0 1px 3px #0002}
.msg{margin:.4em 0;padding:.5em .8em;border-radius:6px;white-space:pre-wrap}
.who{font-weight:600;margin-bottom:.4em}.user{background:#e8eefc}.assistant{background:#eef7ee}.error{background:#fdd}
footer{display:flex;gap:.5em;padding:.5em 1em}
textarea{flex:1;height:3.5em}
#vote{display:none;gap:.5em;justify-content:center;padding:.3em}
</style></head><body>
<header><b>vhost</b>
<label>model <select id="model"></select></label>
<label><input type="checkbox" id="sbs"> side by side with <select id="model2"></select></label>
<label title="two models drawn at random, their names shown after your vote (Chatbot Arena)"><input type="checkbox" id="arena"> anonymous battle</label>
<label>temperature <input id="temperature" type="number" step="0.1" min="0" max="2" value="0.7"></label>
<label>top_p <input id="top_p" type="number" step="0.05" min="0.05" max="1" value="1"></label>
<label>max tokens <input id="max_tokens" type="number" min="1" value="256"></label>
</header>
<main><div class="pane" id="pane0"></div><div class="pane" id="pane1" style="display:none"></div></main>
<div id="vote"><button data-v="A">A is better</button><button data-v="B">B is better</button>
<button data-v="tie">Tie</button><button data-v="bad">Both bad</button></div>
<footer><textarea id="input" placeholder="Send a message (Enter; Shift+Enter for a new line)"></textarea>
<button id="send">Send</button><button id="stop">Stop</button><button id="regen">Regenerate</button>
<button id="clear">Clear</button></footer>
<script>
const $ = id => document.getElementById(id);
let histories = [[], []], controllers = [];
// An anonymous battle: {models: [a, b], voted}; the panes say "Model A"/"Model B" until the vote.
let battle = null;
function label(i, text) {
  let h = $('pane' + i).querySelector('.who');
  if (!h) { h = document.createElement('div'); h.className = 'who'; $('pane' + i).prepend(h); }
  h.textContent = text;
}
function clearAll() {
  histories = [[], []]; battle = null; $('pane0').innerHTML = ''; $('pane1').innerHTML = ''; $('vote').style.display = 'none';
}
async function loadModels() {
  const r = await fetch('/v1/models'); const j = await r.json();
  for (const sel of [$('model'), $('model2')]) {
    sel.innerHTML = '';
    for (const m of j.data) { const o = document.createElement('option'); o.textContent = m.id; sel.appendChild(o); }
  }
  if (j.data.length > 1) $('model2').selectedIndex = 1;
}
function add(pane, role, text) {
  const d = document.createElement('div'); d.className = 'msg ' + role; d.textContent = text;
  $(pane).appendChild(d); $(pane).scrollTop = 1e9; return d;
}
async function ask(i, model) {
  const pane = 'pane' + i, box = add(pane, 'assistant', '');
  const ctl = new AbortController(); controllers.push(ctl);
  const body = {model, stream: true, messages: histories[i],
    temperature: +$('temperature').value, top_p: +$('top_p').value, max_tokens: +$('max_tokens').value};
  // The text is drawn at most once a frame: a fast model streams thousands of tokens a second,
  // and laying the whole answer out on every event froze the page (Stop could not be clicked).
  let text = '', drawn = false;
  const show = () => { if (drawn) return; drawn = true;
    requestAnimationFrame(() => { drawn = false; if (box.className === 'msg assistant') box.textContent = text; $(pane).scrollTop = 1e9; }); };
  try {
    const r = await fetch('/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(body), signal: ctl.signal});
    if (!r.ok) { const e = await r.json(); box.className = 'msg error'; box.textContent = e.error.message; return; }
    const reader = r.body.getReader(), dec = new TextDecoder(); let buf = '';
    for (;;) {
      const {value, done} = await reader.read(); if (done) break;
      buf += dec.decode(value, {stream: true});
      let k; while ((k = buf.indexOf('\n\n')) >= 0) {
        const line = buf.slice(0, k).trim(); buf = buf.slice(k + 2);
        if (!line.startsWith('data: ')) continue;
        const data = line.slice(6); if (data === '[DONE]') continue;
        const j = JSON.parse(data);
        if (j.error) { box.className = 'msg error'; box.textContent = j.error.message; return; }
        const d = j.choices.length ? j.choices[0].delta : null;
        if (d && d.content) { text += d.content; show(); }
      }
    }
  } catch (e) { if (e.name !== 'AbortError') { box.className = 'msg error'; box.textContent = String(e); } }
  if (box.className === 'msg assistant') box.textContent = text;
  histories[i].push({role: 'assistant', content: text});
}
async function send(again) {
  const arena = $('arena').checked, msg = $('input').value.trim();
  if (!again && !msg) return;
  if (again && battle && battle.voted) return;  // a decided battle is not answered again
  if (arena && battle && battle.voted) clearAll();  // after a vote, the next message starts a new battle
  if (arena && !battle) {
    const names = [...$('model').options].map(o => o.value);
    if (names.length < 2) { add('pane0', 'error', 'an anonymous battle needs two served models'); return; }
    const i = Math.floor(Math.random() * names.length);
    let j = Math.floor(Math.random() * (names.length - 1)); if (j >= i) ++j;
    battle = {models: [names[i], names[j]], voted: false};
    $('pane1').style.display = 'block'; label(0, 'Model A'); label(1, 'Model B');
  }
  const sbs = arena || $('sbs').checked;
  const models = battle ? battle.models : [$('model').value, $('model2').value];
  if (!again) {
    $('input').value = '';
    for (let i = 0; i < (sbs ? 2 : 1); ++i) { histories[i].push({role: 'user', content: msg}); add('pane' + i, 'user', msg); }
  }
  controllers = [];
  const jobs = [ask(0, models[0])];
  if (sbs) jobs.push(ask(1, models[1]));
  await Promise.all(jobs);
  $('vote').style.display = sbs && !(battle && battle.voted) ? 'flex' : 'none';
}
$('send').onclick = () => send(false);
$('input').addEventListener('keydown', e => { if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); send(false); } });
$('stop').onclick = () => controllers.forEach(c => c.abort());
$('regen').onclick = () => {
  if (battle && battle.voted) return;  // a decided battle keeps its answers
  for (let i = 0; i < 2; ++i) {
    const h = histories[i];
    if (h.length && h[h.length - 1].role === 'assistant') { h.pop(); const p = $('pane' + i); p.removeChild(p.lastChild); }
  }
  send(true);
};
$('clear').onclick = clearAll;
$('sbs').onchange = $('arena').onchange = () => {
  clearAll();
  $('pane1').style.display = $('sbs').checked || $('arena').checked ? 'block' : 'none';
  $('model').disabled = $('model2').disabled = $('arena').checked;
};
document.querySelectorAll('#vote button').forEach(b => b.onclick = async () => {
  const models = battle ? battle.models : [$('model').value, $('model2').value];
  await fetch('/v1/votes', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({models, vote: b.dataset.v, anonymous: !!battle, conversation: histories})});
  $('vote').style.display = 'none';
  if (battle) { battle.voted = true; label(0, 'Model A: ' + models[0]); label(1, 'Model B: ' + models[1]); }
});
// A link may carry a first message: /?prompt=...&model=... sends it once the models are listed.
loadModels().then(() => {
  const q = new URLSearchParams(location.search);
  if (q.get('model')) $('model').value = q.get('model');
  if (q.get('prompt')) { $('input').value = q.get('prompt'); send(false); }
});
</script></body></html>
)HTML";
}

}  // namespace vhost::host
