// Drives `vhost serve` with the official OpenAI client library (npm "openai", vendored in
// tests/vendor), as an application would:  node openai_client.mjs BASE_URL MODEL
import OpenAI from 'openai';
import assert from 'node:assert/strict';

const [base, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + '/v1', apiKey: 'unused', maxRetries: 0 });

const models = await client.models.list();
assert.deepEqual(models.data.map(m => m.id), [model]);

const prompt = "A chat between a curious user and an artificial intelligence assistant. USER: Hi ASSISTANT:";
const chat = await client.chat.completions.create({
  model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Compare a list and a tuple.' }],
  max_tokens: 12, temperature: 0, seed: 3 });
assert.equal(chat.object, 'chat.completion');
assert.equal(chat.choices[0].message.role, 'assistant');
assert.equal(typeof chat.choices[0].message.content, 'string');
assert.ok(['stop', 'length'].includes(chat.choices[0].finish_reason));
assert.ok(chat.usage.completion_tokens >= 1 && chat.usage.completion_tokens <= 12);
assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);

// Streaming gives the same text as not streaming (greedy).
const stream = await client.chat.completions.create({
  model, messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Compare a list and a tuple.' }],
  max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
let streamed = '', finish = null, usage = null, chunks = 0;
for await (const c of stream) {
  chunks++;
  if (c.usage) usage = c.usage;
  if (!c.choices.length) continue;
  streamed += c.choices[0].delta.content ?? '';
  if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
}
assert.equal(streamed, chat.choices[0].message.content);
assert.equal(finish, chat.choices[0].finish_reason);
assert.equal(usage.completion_tokens, chat.usage.completion_tokens);
assert.ok(chunks >= 3);

// Completions, n = 2 with a seed: two choices, reproducible.
const a = await client.completions.create({ model, prompt, max_tokens: 8, n: 2, seed: 7, temperature: 1 });
const b = await client.completions.create({ model, prompt, max_tokens: 8, n: 2, seed: 7, temperature: 1 });
assert.equal(a.object, 'text_completion');
assert.equal(a.choices.length, 2);
assert.deepEqual(a.choices.map(c => c.text), b.choices.map(c => c.text));
let ctext = '';
for await (const c of await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0, stream: true }))
  ctext += c.choices[0]?.text ?? '';
const g = await client.completions.create({ model, prompt, max_tokens: 8, temperature: 0 });
assert.equal(ctext, g.choices[0].text);

// Errors arrive as the library's typed errors.
await assert.rejects(client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
  e => e instanceof OpenAI.NotFoundError && e.error.param === 'model');
await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], temperature: 9 }),
  e => e instanceof OpenAI.BadRequestError && /temperature/.test(e.message));
await assert.rejects(client.chat.completions.create({ model, messages: [{ role: 'assistant', content: 'x' }] }),
  e => e instanceof OpenAI.BadRequestError && /alternate/.test(e.message));

// Eight concurrent streams all finish.
const many = await Promise.all([...Array(8).keys()].map(async i => {
  let t = '';
  for await (const c of await client.completions.create({ model, prompt, max_tokens: 10, seed: i, stream: true }))
    t += c.choices[0]?.text ?? '';
  return t;
}));
assert.equal(many.length, 8);
console.log('openai client: ok');
