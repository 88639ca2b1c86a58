// The page of a customer's web app: it never holds a secret. Its backend mints a short-lived app
// JWT for each request's parameters (POST /token); the SDK calls the gateway (another origin)
// with it, streams the chat, and lists the models with the subscription id alone.
import { Auth, TollgateClient } from '/sdk/index.js';

const q = new URLSearchParams(location.search);
const gateway = q.get('gw');
const subscriptionId = q.get('sub');
const out = document.getElementById('out');

async function getJwt(req) {
  const res = await fetch('/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(req.params ?? {}),
  });
  if (!res.ok) throw new Error(`the backend refused to mint: ${res.status}`);
  return (await res.json()).token;
}

async function run() {
  const client = new TollgateClient({
    baseUrl: gateway,
    auth: Auth.jwt({ subscriptionId, getJwt, params: ['/model', '/max_tokens'] }),
  });
  let text = '';
  let usage = null;
  const stream = await client.chatStream({
    model: 'mock-chat',
    max_tokens: 32,
    messages: [{ role: 'user', content: 'Say hello from the browser' }],
    stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    text += chunk.choices?.[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
    out.textContent = text;
  }
  const models = await new TollgateClient({ baseUrl: gateway, auth: Auth.subscriptionId(subscriptionId) }).models();
  return { text, usage, models: models.data.map((m) => m.id) };
}

run().then(
  (r) => { document.body.dataset.result = JSON.stringify(r); },
  (e) => { document.body.dataset.error = `${e?.name}: ${e?.code ?? ''} ${e?.message ?? e}`; },
);
