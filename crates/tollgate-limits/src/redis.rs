//! The shared limiter: every decision is ONE Lua script, atomic in Redis, taking the time from
//! `redis.call('TIME')` so N gateway instances (whatever their clocks) enforce one limit. The
//! arithmetic mirrors `gcra.rs` exactly. Settlement (token reconciliation, quota refunds,
//! releasing a concurrency slot) is a second script run off the request path.
//!
//! Keys: `<prefix><scope>:<dim>` (GCRA TAT as a float string, concurrency as a sorted set of
//! leases) and `<prefix><scope>:<dim>:<period start>` for quota counters. Every key expires by
//! itself.

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::{Check, CheckState, Decision, Dim, MAX_UNITS};

/// What the admission script answered.
#[derive(Debug)]
pub enum Answer {
    Decided(Decision),
    /// These quota checks have no counter in Redis (first use in their period, or Redis lost
    /// its data): load what the store recorded and ask again.
    NeedSeeds(Vec<usize>),
}

/// KEYS[i] per check; ARGV = n, member, lease_ms, then per check: kind, limit, cost, seed.
/// Returns {deny_index (0 = allowed), retry_ms, then per check: remaining, reset_ms, period}, or
/// {-1, i, j, …} when quota counters i, j, … do not exist and their seed was not given (-1): the
/// caller loads what the store recorded for them and asks again; nothing else was written.
const ADMIT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
local member = ARGV[2]
local lease = tonumber(ARGV[3])
local WINDOW = 60000
local DAY = 86400000

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  return y, m
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mm = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mm + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
local function bounds(kind)
  local day = math.floor(now / DAY)
  if kind == 'd' then return day * DAY, (day + 1) * DAY end
  local y, m = civil_from_days(day)
  local ny, nm = y, m + 1
  if nm > 12 then nm = 1; ny = y + 1 end
  return days_from_civil(y, m, 1) * DAY, days_from_civil(ny, nm, 1) * DAY
end

local deny, deny_quota, retry = 0, false, 0
local function denied(i, r, quota)
  if deny == 0 or (quota and not deny_quota) or (quota == deny_quota and r > retry) then
    deny, deny_quota, retry = i, quota, r
  end
end
local out = {}
local pending = {}
local unseeded = {}
for i = 1, n do
  local b = 3 + (i - 1) * 4
  local kind, limit, cost, seed = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local key = KEYS[i]
  local remaining, reset, period = 0, 0, 0
  if kind == 'g' then
    local interval = WINDOW / limit
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    local new_tat = tat + cost * interval
    local over = new_tat - now - WINDOW
    if cost > limit or over > 0.01 then
      denied(i, over, false)
      remaining = math.floor((WINDOW - (tat - now)) / interval + 1e-6)
      reset = tat - now
    else
      pending[#pending + 1] = {'g', key, new_tat}
      remaining = math.floor((WINDOW - (new_tat - now)) / interval + 1e-6)
      reset = new_tat - now
    end
  elseif kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local used = redis.call('ZCARD', key)
    if used + cost > limit then
      denied(i, 1000, false)
    else
      pending[#pending + 1] = {'c', key}
    end
    remaining = limit - used - cost
  else
    local start, finish = bounds(kind)
    local qkey = key .. ':' .. string.format('%d', start)
    local used = tonumber(redis.call('GET', qkey) or '-1')
    if used < 0 and seed < 0 then
      unseeded[#unseeded + 1] = i
      used = 0
    elseif used < 0 then
      used = seed
      redis.call('SET', qkey, string.format('%d', used), 'PX', math.floor(finish - now) + DAY)
    end
    if used + cost > limit then
      denied(i, finish - now, true)
    else
      pending[#pending + 1] = {'q', qkey, cost}
    end
    remaining = limit - used - cost
    reset = finish - now
    period = start
  end
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = math.floor(remaining)
  out[#out + 1] = math.floor(reset)
  out[#out + 1] = period
end
if #unseeded > 0 then
  local res = {-1}
  for _, i in ipairs(unseeded) do res[#res + 1] = i end
  return res
end
if deny == 0 then
  for _, p in ipairs(pending) do
    if p[1] == 'g' then
      redis.call('SET', p[2], string.format('%.3f', p[3]), 'PX', math.floor(p[3] - now) + 1000)
    elseif p[1] == 'c' then
      redis.call('ZADD', p[2], now + lease, member)
      redis.call('PEXPIRE', p[2], lease)
    else
      redis.call('INCRBY', p[2], p[3])
    end
  end
end
local res = {deny, math.floor(retry)}
for _, v in ipairs(out) do res[#res + 1] = v end
return res
"#;

/// KEYS[i] per operation; ARGV = n, member, then per op: kind, limit, delta.
const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = tonumber(ARGV[1])
local member = ARGV[2]
for i = 1, n do
  local b = 2 + (i - 1) * 3
  local kind, limit, delta = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local key = KEYS[i]
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', key) or '0')
    if tat < now then tat = now end
    tat = tat + delta * (60000 / limit)
    if tat > now then
      redis.call('SET', key, string.format('%.3f', tat), 'PX', math.floor(tat - now) + 1000)
    else
      redis.call('DEL', key)
    end
  elseif kind == 'c' then
    redis.call('ZREM', key, member)
  else
    local used = tonumber(redis.call('GET', key) or '-1')
    if used >= 0 then
      local v = used + delta
      if v < 0 then v = 0 end
      redis.call('SET', key, string.format('%d', v), 'KEEPTTL')
    end
  end
end
return 1
"#;

pub struct RedisLimiter {
    conn: ConnectionManager,
    prefix: String,
    admit: redis::Script,
    settle: redis::Script,
    timeout: Duration,
    lease_ms: u64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn dim_code(d: Dim) -> &'static str {
    match d {
        Dim::Requests | Dim::Tokens => "g",
        Dim::Concurrent => "c",
        Dim::RequestsDay => "d",
        Dim::TokensMonth => "m",
    }
}

impl RedisLimiter {
    /// Creates the client without connecting: the gateway starts (on the local limiter) even
    /// when Redis is down, and switches over once it answers.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        lease: Duration,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!(
                "invalid redis_url: {}",
                tollgate_store::redact_url(&e.to_string())
            )
        })?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| anyhow::anyhow!("cannot set up the Redis client: {e}"))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            admit: redis::Script::new(ADMIT),
            settle: redis::Script::new(SETTLE),
            timeout,
            lease_ms: lease.as_millis().max(1000) as u64,
        })
    }

    fn key(&self, c: &Check) -> String {
        format!("{}{}:{}", self.prefix, c.scope, c.dim.as_str())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: redis::ScriptInvocation<'_>,
    ) -> Result<T, String> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// One atomic decision for all checks of a request. `seeds[i]`: what the store recorded in
    /// quota check i's period, used only if Redis has no counter for it; `None` = not loaded,
    /// and the answer is [`Answer::NeedSeeds`] if Redis needs it.
    pub async fn decide(
        &self,
        checks: &[Check],
        seeds: &[Option<i64>],
        member: &str,
    ) -> Result<Answer, String> {
        let mut inv = self.admit.prepare_invoke();
        inv.arg(checks.len()).arg(member).arg(self.lease_ms);
        // Lua numbers are doubles: every argument is kept exact (at most 2^53 - 1).
        for (i, c) in checks.iter().enumerate() {
            inv.key(self.key(c));
            inv.arg(dim_code(c.dim))
                .arg(c.limit.clamp(1, MAX_UNITS))
                .arg(c.cost.min(MAX_UNITS))
                .arg(match seeds.get(i).copied().flatten() {
                    Some(s) => s.clamp(0, MAX_UNITS as i64),
                    None => -1,
                });
        }
        let reply: Vec<i64> = self.run(inv).await?;
        if reply.first() == Some(&-1) {
            let need = reply[1..]
                .iter()
                .filter_map(|&i| usize::try_from(i).ok()?.checked_sub(1))
                .filter(|&i| i < checks.len())
                .collect();
            return Ok(Answer::NeedSeeds(need));
        }
        if reply.len() != 2 + 3 * checks.len() {
            return Err(format!("unexpected reply of {} values", reply.len()));
        }
        let states = reply[2..]
            .chunks(3)
            .map(|c| CheckState {
                remaining: c[0].max(0) as u64,
                reset_ms: c[1].max(0) as u64,
                period_start: c[2],
            })
            .collect();
        Ok(Answer::Decided(Decision {
            denied: usize::try_from(reply[0])
                .ok()
                .and_then(|i| i.checked_sub(1)),
            retry_ms: reply[1] as f64,
            states,
        }))
    }

    /// Settles a reservation (see `LocalLimiter::settle` for the meaning of `deltas`).
    pub async fn settle(
        &self,
        checks: &[Check],
        states: &[CheckState],
        deltas: &[i64],
        member: &str,
    ) -> Result<(), String> {
        let mut inv = self.settle.prepare_invoke();
        let mut n = 0usize;
        let mut keys = Vec::new();
        let mut args: Vec<(String, u64, i64)> = Vec::new();
        let exact = MAX_UNITS as i64;
        for (i, c) in checks.iter().enumerate() {
            let delta = deltas.get(i).copied().unwrap_or(0).clamp(-exact, exact);
            match c.dim {
                Dim::Requests => continue,
                Dim::Tokens if delta == 0 => continue,
                Dim::Tokens => {
                    keys.push(self.key(c));
                    args.push(("g".into(), c.limit, delta));
                }
                Dim::Concurrent => {
                    keys.push(self.key(c));
                    args.push(("c".into(), c.limit, 0));
                }
                Dim::RequestsDay | Dim::TokensMonth if delta == 0 => continue,
                Dim::RequestsDay | Dim::TokensMonth => {
                    let start = states.get(i).map_or(0, |s| s.period_start);
                    keys.push(format!("{}:{start}", self.key(c)));
                    args.push(("q".into(), c.limit, delta));
                }
            }
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        inv.arg(n).arg(member);
        for (k, (kind, limit, delta)) in keys.into_iter().zip(args) {
            inv.key(k);
            inv.arg(kind).arg(limit.clamp(1, MAX_UNITS)).arg(delta);
        }
        let _: i64 = self.run(inv).await?;
        Ok(())
    }

    /// Is Redis answering?
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        matches!(
            tokio::time::timeout(
                self.timeout.max(Duration::from_millis(500)),
                cmd.query_async::<String>(&mut conn)
            )
            .await,
            Ok(Ok(_))
        )
    }
}
