// A real OpenID Connect provider (npm `oidc-provider`) for Gangway's
// end-to-end tests. Not a fake: tokens, JWKS, discovery, PKCE, refresh-token
// rotation and the device flow are the library's own.
//
//   node server.js [PORT]        (PORT defaults to $PORT, then 0 = any free port)
//
// Environment (all optional):
//   AUDIENCE          resource indicator / `aud` of access tokens
//                     (default https://relay.gangway.test)
//   ACCESS_TOKEN_TTL  access token lifetime in seconds (default 60)
//   TLS_CERT, TLS_KEY PEM files: serve https (the issuer is then
//                     https://127.0.0.1:<port>), as real providers do
//   ISSUER_HOST       the host name in the issuer instead of 127.0.0.1 (it
//                     still listens on 127.0.0.1): a name only a proxy's
//                     hosts file knows, for tests behind a corporate proxy
//   DEVICE_CODE_TTL   device code lifetime in seconds (default 600)
//   DEVICE_INTERVAL   seconds: the device authorization response names this
//                     polling `interval` (the library sends none, so clients
//                     use 5), and a poll sooner than the interval after the
//                     previous one is answered `slow_down`, which adds 5 s
//                     to it (RFC 8628 §3.5)
//   DEVICE_SLOW_DOWN_FIRST=1  also answer the first pending poll of each
//                     device code with `slow_down` (a provider asking for a
//                     slower pace than it first said)
//   DPOP_NONCE=1      token requests with a DPoP proof must carry the
//                     provider's nonce (RFC 9449 §8): the first is answered
//                     `use_dpop_nonce` with a `DPoP-Nonce` header
//
// Once it accepts connections it prints exactly one line to stdout:
//   LISTENING http://127.0.0.1:<port>      (https:// with TLS_CERT)
// and that URL is the issuer. Everything else goes to stderr.
//
// Clients:
//   gangway-ci, ci-dev, ci-readonly, ci-nogroups: confidential, secret `ci-secret`,
//       client_credentials only, HTTP Basic client authentication;
//       the access token's `sub` is the client id, `groups` as in CI_CLIENTS.
//   gangway   public native client: authorization_code (+PKCE S256, required),
//       refresh_token, device_code; redirect http://127.0.0.1/callback on any
//       port. Refresh tokens need scope offline_access and prompt=consent.
// Accounts for the login form: see ACCOUNTS.
//
// Test administration (loopback only, like everything here):
//   POST /admin/revoke-grants?account=NAME   ends every grant the account
//       consented to, as an administrator revoking a user's sessions would:
//       its refresh tokens stop working (invalid_grant). Answers
//       {"revoked": <number of grants>}.
//   GET /admin/device-polls   every device-code poll of the token endpoint
//       so far, in order: [{"ms": <since start>, "answer": "<error or
//       tokens>"}] (with DEVICE_INTERVAL set).
//
// All access tokens are RS256 JWTs (`typ: at+jwt`) for AUDIENCE, whether or
// not the client sends a `resource` parameter. A token request with a DPoP
// proof (ES256) gets tokens bound to its key: `token_type: DPoP`, the
// access token's `cnf.jkt` the key's thumbprint, and (public clients) a
// refresh token that only that key can use. Signing keys live in memory:
// a restart means new keys.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors } from 'oidc-provider';

const AUDIENCE = process.env.AUDIENCE || 'https://relay.gangway.test';
const ACCESS_TOKEN_TTL = integer('ACCESS_TOKEN_TTL', process.env.ACCESS_TOKEN_TTL, 60, 1, 86400);
const PORT = integer('PORT', process.argv[2] ?? process.env.PORT, 0, 0, 65535);
const DEVICE_CODE_TTL = integer('DEVICE_CODE_TTL', process.env.DEVICE_CODE_TTL, 600, 1, 86400);
const DEVICE_INTERVAL = integer('DEVICE_INTERVAL', process.env.DEVICE_INTERVAL, 0, 0, 60);
const DEVICE_SLOW_DOWN_FIRST = process.env.DEVICE_SLOW_DOWN_FIRST === '1';
const DPOP_NONCE = process.env.DPOP_NONCE === '1';

const CI_SECRET = 'ci-secret';

/** Confidential client_credentials clients: client id -> groups claim. */
const CI_CLIENTS = {
  'gangway-ci': ['developers'],
  'ci-dev': ['developers'],
  'ci-readonly': ['readers'],
  'ci-nogroups': [],
};

/** Users of the login form. */
const ACCOUNTS = {
  alice: { password: 'alice-pw', name: 'Alice Example', groups: ['developers'] },
  bob: { password: 'bob-pw', name: 'Bob Example', groups: ['readers'] },
};

function integer(name, raw, fallback, min, max) {
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    console.error(`oidc peer: ${name} must be an integer in ${min}..${max}, got ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return n;
}

function groupsFor(token) {
  if (token.accountId) return ACCOUNTS[token.accountId]?.groups ?? [];
  return CI_CLIENTS[token.clientId] ?? [];
}

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };
}

function configuration() {
  return {
    clients: [
      ...Object.keys(CI_CLIENTS).map((clientId) => ({
        client_id: clientId,
        client_secret: CI_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      })),
      {
        client_id: 'gangway',
        application_type: 'native',
        token_endpoint_auth_method: 'none',
        redirect_uris: ['http://127.0.0.1/callback'],
        response_types: ['code'],
        grant_types: [
          'authorization_code',
          'refresh_token',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
      },
    ],
    jwks: { keys: [signingKey()] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    scopes: ['openid', 'offline_access', 'groups', 'profile'],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    async findAccount(_ctx, sub) {
      const account = ACCOUNTS[sub];
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, name: account.name, preferred_username: sub, groups: account.groups };
        },
      };
    },
    // `sub` is set by the library (account id, or client id for
    // client_credentials) and cannot be overridden from here.
    async extraTokenClaims(_ctx, token) {
      return { groups: groupsFor(token) };
    },
    responseTypes: ['code'],
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      // The stock pages below @import a web font from the internet; these
      // plain ones keep a test browser on loopback.
      deviceFlow: {
        enabled: true,
        async userCodeInputSource(ctx, form, _out, err) {
          let text;
          if (err?.constructor?.name === 'AbortedError') text = 'Sign-in aborted: the device was not signed in.';
          else if (err) text = err.userCode || err.name === 'NoCodeError' ? 'The code you entered is incorrect.' : 'There was an error processing your request.';
          const msg = err ? `<p id="error" role="alert">${escape(text)}</p>` : '';
          ctx.body = page('Device sign-in', `${msg}<p>Enter the code displayed on your device.</p>${form}<button id="submit" type="submit" form="op.deviceInputForm">Continue</button>`);
        },
        async userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
          ctx.body = page('Confirm device', `<p><strong>${escape(client.clientName || client.clientId)}</strong> shows the code <code id="user-code">${escape(userCode)}</code>.</p>${form}`
            + '<button id="submit" autofocus type="submit" form="op.deviceConfirmForm">Continue</button>'
            + '<button id="cancel" type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>');
        },
        async successSource(ctx) {
          ctx.body = page('Sign-in success', '<p id="success">You can close this page.</p>');
        },
      },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          ctx.body = page('Sign out', `${form}<button id="submit" autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Sign out</button>`);
        },
        async postLogoutSuccessSource(ctx) {
          ctx.body = page('Signed out', '<p id="success">You are signed out.</p>');
        },
      },
      revocation: { enabled: true },
      // RFC 9449, on by default in oidc-provider 9; explicit here because
      // Gangway's tests depend on it. Replays of a proof are refused.
      dPoP: {
        enabled: true,
        allowReplay: false,
        ...(DPOP_NONCE ? { nonceSecret: crypto.randomBytes(32), requireNonce: () => true } : {}),
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => AUDIENCE,
        // Without this, a code exchange whose scope has `openid` yields an
        // opaque userinfo-only token unless `resource` is sent again.
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, resourceIndicator) => {
          if (resourceIndicator !== AUDIENCE) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            scope: 'groups',
            audience: AUDIENCE,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      DeviceCode: DEVICE_CODE_TTL,
      IdToken: 3600,
      RefreshToken: 24 * 3600,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: 24 * 3600,
    },
    renderError(ctx, out, _error) {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre id="error">${escape(JSON.stringify(out, null, 2))}</pre>`);
    },
  };
}

// ---- the login form (replaces the stock dev form, which takes any password)

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, error) {
  return page('Sign in to Gangway test IdP', `
    ${error ? `<p id="error" role="alert">${escape(error)}</p>` : ''}
    <form id="login" method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
      <label>Username <input id="username" name="username" required autofocus></label>
      <label>Password <input id="password" name="password" type="password" required></label>
      <button id="submit" type="submit">Sign in</button>
    </form>
    <form method="post" action="/interaction/${escape(uid)}/abort"><button id="cancel" type="submit">Cancel</button></form>`);
}

function send(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/** Grant ids each account consented to (for /admin/revoke-grants). */
const GRANTS = new Map();

/** Consent is given automatically for everything the client asked for. */
async function grantConsent(provider, details) {
  const { prompt: { details: missing }, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const id = await grant.save();
  if (!GRANTS.has(grant.accountId)) GRANTS.set(grant.accountId, new Set());
  GRANTS.get(grant.accountId).add(id);
  return id;
}

async function revokeGrants(provider, req, res, issuer) {
  if (req.method !== 'POST') return send(res, 405, page('Error', 'use POST'));
  const account = new URL(req.url, issuer).searchParams.get('account') ?? '';
  const ids = [...(GRANTS.get(account) ?? [])];
  for (const id of ids) {
    const grant = await provider.Grant.find(id);
    if (grant) await grant.destroy();
    await provider.RefreshToken.revokeByGrantId(id);
    await provider.AccessToken.revokeByGrantId(id);
  }
  GRANTS.delete(account);
  console.error(`oidc peer: revoked ${ids.length} grant(s) of ${JSON.stringify(account)}`);
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ revoked: ids.length }));
}

async function interaction(provider, req, res, path) {
  const [, , uid, action] = path.split('/');
  if (req.method === 'GET' && !action) {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return send(res, 400, page('Error', 'interaction mismatch'));
    if (details.prompt.name === 'login') return send(res, 200, loginPage(uid));
    if (details.prompt.name === 'consent') {
      const grantId = await grantConsent(provider, details);
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    return send(res, 400, page('Error', `unsupported prompt ${escape(details.prompt.name)}`));
  }
  if (req.method === 'POST' && action === 'login') {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid || details.prompt.name !== 'login') {
      return send(res, 400, page('Error', 'no login pending'));
    }
    const form = await readForm(req);
    const username = form.get('username') ?? '';
    const account = Object.hasOwn(ACCOUNTS, username) ? ACCOUNTS[username] : undefined;
    if (!account || form.get('password') !== account.password) {
      return send(res, 401, loginPage(uid, 'Invalid username or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
  }
  if (req.method === 'POST' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  return send(res, 404, page('Not found', ''));
}

// ---- device flow pacing (DEVICE_INTERVAL): the interval the provider asks
// for, and slow_down for clients that poll faster (oidc-provider itself
// never answers slow_down)

const STARTED = Date.now();
/** device_code -> { interval (s), last poll (ms), slowed (bool) } */
const DEVICE_PACE = new Map();
/** Every device-code poll: { ms, answer }. */
const DEVICE_POLLS = [];

async function devicePacing(ctx, next) {
  await next();
  if (!DEVICE_INTERVAL || ctx.method !== 'POST') return;
  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body.interval = DEVICE_INTERVAL;
    // The interval is the least time between two polls (RFC 8628 §3.2), so
    // the first poll may come at once.
    DEVICE_PACE.set(ctx.body.device_code, { interval: DEVICE_INTERVAL, last: undefined, slowed: false });
    return;
  }
  const params = ctx.oidc?.params;
  if (ctx.path !== '/token' || params?.grant_type !== 'urn:ietf:params:oauth:grant-type:device_code') return;
  const pace = DEVICE_PACE.get(params.device_code);
  let answer = ctx.body?.error ?? (ctx.body?.access_token ? 'tokens' : String(ctx.status));
  if (pace && answer === 'authorization_pending') {
    const now = Date.now();
    // 50 ms of slack for timer granularity.
    const early = pace.last !== undefined && now - pace.last < pace.interval * 1000 - 50;
    if (early || (DEVICE_SLOW_DOWN_FIRST && !pace.slowed)) {
      pace.interval += 5;
      pace.slowed = true;
      answer = 'slow_down';
      ctx.status = 400;
      ctx.body = { error: 'slow_down', error_description: `poll at most every ${pace.interval} s` };
    }
    pace.last = now;
  } else if (pace) {
    pace.last = Date.now();
  }
  DEVICE_POLLS.push({ ms: Date.now() - STARTED, answer });
}

// ---- start: listen first, then build the provider with the real port

const TLS = process.env.TLS_CERT && process.env.TLS_KEY
  ? { cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }
  : undefined;
const server = TLS ? https.createServer(TLS) : http.createServer();
server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  const host = process.env.ISSUER_HOST || '127.0.0.1';
  const issuer = `${TLS ? 'https' : 'http'}://${host}:${port}`;
  const provider = new Provider(issuer, configuration());
  provider.on('server_error', (_ctx, err) => console.error('oidc peer: server_error', err));
  provider.use(devicePacing);
  const callback = provider.callback();

  server.on('request', (req, res) => {
    const path = new URL(req.url, issuer).pathname;
    if (path === '/admin/revoke-grants') {
      revokeGrants(provider, req, res, issuer).catch((err) => {
        console.error('oidc peer: revoke failed:', err);
        if (!res.headersSent) send(res, 500, page('Error', escape(err.message)));
        else res.end();
      });
    } else if (path === '/admin/device-polls') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(DEVICE_POLLS));
    } else if (path.startsWith('/interaction/')) {
      interaction(provider, req, res, path).catch((err) => {
        console.error('oidc peer: interaction failed:', err);
        if (!res.headersSent) send(res, err.statusCode ?? 500, page('Error', escape(err.message)));
        else res.end();
      });
    } else {
      callback(req, res);
    }
  });

  process.stdout.write(`LISTENING ${issuer}\n`);
  console.error(`oidc peer: issuer ${issuer}, audience ${AUDIENCE}, access token TTL ${ACCESS_TOKEN_TTL}s`);
});

function shutdown(signal) {
  console.error(`oidc peer: ${signal}, stopping`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
