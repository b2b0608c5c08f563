// The viewer's prompts are exactly-once: each carries a fresh Idempotency-Key and is sent again with the same
// key when the connection fails before a reply. Against a real local HTTP server that resets the first
// connection of each prompt (what a keep-alive race or a dropped network does).
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { test } from 'node:test';

import { Api, IDEMPOTENCY_KEY_HEADER } from '../src/api.js';

async function resettingServer() {
  const seen = [];
  const server = createServer((req, res) => {
    const key = req.headers[IDEMPOTENCY_KEY_HEADER.toLowerCase()] ?? null;
    seen.push({ method: req.method, url: req.url, key });
    req.resume();
    req.on('end', () => {
      if (seen.filter((s) => s.url === req.url).length === 1) {
        req.socket.destroy(); // no reply: the client cannot know whether the request was applied
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ version: 2 }));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const api = new Api(`http://127.0.0.1:${server.address().port}`);
  api.sessionId = 's1';
  api.token = 't';
  return { server, api, seen };
}

test('a prompt whose connection was reset is resent once with the same key', async () => {
  const { server, api, seen } = await resettingServer();
  try {
    const reply = await api.clicks(1, [[1, 2, 3]], [1], 'gru');
    assert.deepEqual(reply, { version: 2 });
    assert.equal(seen.length, 2);
    assert.match(seen[0].key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.equal(seen[1].key, seen[0].key);
    await api.removeObject(1);
    assert.equal(seen.length, 4);
    assert.equal(seen[3].key, seen[2].key);
    assert.notEqual(seen[2].key, seen[0].key); // a new prompt, a new key
  } finally {
    server.close();
  }
});

test('a read is not resent: only keyed prompts are safe to send twice', async () => {
  const { server, api, seen } = await resettingServer();
  try {
    await assert.rejects(api.request('GET', api.session('')));
    assert.equal(seen.length, 1);
    assert.equal(seen[0].key, null);
  } finally {
    server.close();
  }
});
