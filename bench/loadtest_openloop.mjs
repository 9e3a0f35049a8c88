// Open-loop (fixed arrival rate) load with the npm package `loadtest` (run by
// bench/openloop.py, not by hand). loadtest's requestsPerSecond mode fires one request
// every 1000/rate ms from a timer whether or not earlier ones have answered, which is
// what an open-loop test needs (autocannon's overallRate is a per-connection,
// per-second token bucket: every connection fires at each second's start, in bursts).
//
// Usage: node loadtest_openloop.mjs CONFIG_JSON
//   CONFIG_JSON: {"loadtest_dir", "url", "bodies_file", "rate", "seconds", "timeout_ms"}
// Prints one JSON line between markers.
import { readFileSync } from 'node:fs'
import http from 'node:http'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const { loadTest } = await import(pathToFileURL(join(config.loadtest_dir, 'index.js')).href)

const bodies = readFileSync(config.bodies_file, 'utf8').split('\n').filter((l) => l.length > 0)
if (bodies.length === 0) throw new Error('no bodies in ' + config.bodies_file)

// loadtest's own keep-alive agent caps sockets at 10, which would cap the server's
// concurrency (and so its batch size) at 10; this agent opens as many as needed.
const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })
let sent = 0
const statuses = {}

const result = await loadTest({
  url: config.url,
  method: 'POST',
  contentType: 'application/json',
  requestsPerSecond: config.rate,
  maxSeconds: config.seconds,
  timeout: config.timeout_ms,
  quiet: true,
  body: () => bodies[sent++ % bodies.length],
  requestGenerator: (options, params, request, connect) => {
    params.agent = agent
    return request(params, connect)
  },
  statusCallback: (error, res) => {
    const key = res && res.statusCode ? String(res.statusCode) : 'connection_error'
    statuses[key] = (statuses[key] || 0) + 1
  },
})
agent.destroy()

const out = {
  sent,
  completed: result.totalRequests,
  errors: result.totalErrors,
  elapsed_s: result.elapsedSeconds,
  clients: result.clients,
  mean_ms: result.meanLatencyMs,
  max_ms: result.maxLatencyMs,
  histogram_ms: result.histogramMs,
  error_codes: result.errorCodes,
  statuses,
}
process.stdout.write('BENCH_OPENLOOP_JSON_BEGIN\n' + JSON.stringify(out) + '\nBENCH_OPENLOOP_JSON_END\n')
process.exit(0)
