-- Checks and charges every limit of one API key in one atomic step, mirroring
-- src/limiter/ring.rs (the in-memory ring) so both backends decide alike.
--
-- KEYS[i]  one hash per limit, all sharing the hash tag {key_id} (Redis Cluster).
-- ARGV[1]  "" in production: time is read from TIME, so instances with skewed
--          clocks agree. Tests pass a time in ms, because Redis time cannot be faked.
-- ARGV[2i], ARGV[2i+1]  max and window_ms of limit i.
--
-- Each hash holds: w = window_ms, h = head bucket (the newest bucket seen, as
-- in the ring), l = time of the newest charge, and one field per bucket
-- (absolute bucket number -> requests counted in it).
--
-- Returns {refusing index (1-based, 0 when admitted), retry_after_ms,
--          remaining_1, wait_1, remaining_2, wait_2, ...}.

-- TIME before writes needs effects replication before Redis 5; a no-op since.
if redis.replicate_commands then
  redis.replicate_commands()
end

local MAX_COUNT = 65535

local now_ms
if ARGV[1] ~= '' then
  now_ms = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Bucket count and width: the smallest B in 60..=100 dividing the window, as ring.rs.
local function layout(window_ms)
  window_ms = math.max(window_ms, 1)
  for buckets = 60, 100 do
    if window_ms % buckets == 0 then
      return buckets, window_ms / buckets
    end
  end
  return 60, math.ceil(window_ms / 60)
end

local function field(bucket)
  return string.format('%d', bucket)
end

local function new_ring(window_ms)
  local buckets, bucket_ms = layout(window_ms)
  return {
    window_ms = window_ms, buckets = buckets, bucket_ms = bucket_ms,
    head = math.floor(now_ms / bucket_ms), last_ms = now_ms,
    counts = {}, total = 0,
    -- stale: bucket fields to delete; rewrite: replace the whole hash.
    stale = {}, rewrite = false,
  }
end

-- Drops what has left the counted span at now_ms, as Ring::advance does.
local function advance(ring)
  if ring.total > 0 and now_ms >= ring.last_ms + ring.window_ms then
    -- The newest charge has left the window, and every older one with it.
    for bucket in pairs(ring.counts) do
      ring.stale[#ring.stale + 1] = bucket
    end
    ring.counts, ring.total = {}, 0
  end
  if now_ms < (ring.head + 1) * ring.bucket_ms then
    return
  end
  local head = math.floor(now_ms / ring.bucket_ms)
  for bucket, count in pairs(ring.counts) do
    if bucket < head - ring.buckets then
      ring.total = ring.total - count
      ring.counts[bucket] = nil
      ring.stale[#ring.stale + 1] = bucket
    end
  end
  ring.head = head
end

local function load(key, window_ms)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    return new_ring(window_ms)
  end
  local stored = {}
  local counts, total = {}, 0
  for i = 1, #flat, 2 do
    local name, value = flat[i], tonumber(flat[i + 1])
    if name == 'w' or name == 'h' or name == 'l' then
      stored[name] = value
    else
      counts[tonumber(name)] = value
      total = total + value
    end
  end
  local ring = new_ring(stored.w or window_ms)
  ring.head = stored.h or ring.head
  ring.last_ms = stored.l or ring.last_ms
  ring.counts, ring.total = counts, total
  advance(ring)
  if ring.window_ms ~= window_ms then
    -- A reload changed the window: fold what is counted now into the current
    -- bucket of a new ring, conservative under both windows (Ring::rebucket).
    local folded = math.min(ring.total, MAX_COUNT)
    local last_ms = math.max(now_ms, ring.last_ms)
    ring = new_ring(window_ms)
    ring.last_ms = last_ms
    if folded > 0 then
      ring.counts[ring.head] = folded
      ring.total = folded
    end
    ring.rewrite = true
  end
  return ring
end

local function remaining(ring, max)
  return math.max(math.min(max, MAX_COUNT) - ring.total, 0)
end

-- Ms until one more request fits (Ring::wait_ms): the start of the first bucket
-- whose departure frees enough, capped by the newest charge's expiry.
local function wait_ms(ring, max)
  max = math.min(max, MAX_COUNT)
  if ring.total < max then
    return 0
  end
  if max == 0 then
    return math.max(ring.window_ms, 1)
  end
  local must_free = ring.total - (max - 1)
  local all_expire_at_ms = ring.last_ms + ring.window_ms
  local freed = 0
  for j = 1, ring.buckets + 1 do
    freed = freed + (ring.counts[ring.head - ring.buckets - 1 + j] or 0)
    if freed >= must_free then
      local frees_at_ms = math.min((ring.head + j) * ring.bucket_ms, all_expire_at_ms)
      return math.max(frees_at_ms - now_ms, 0)
    end
  end
  return math.max(all_expire_at_ms - now_ms, 0)
end

local function charge(ring)
  ring.counts[ring.head] = (ring.counts[ring.head] or 0) + 1
  ring.total = ring.total + 1
  ring.last_ms = math.max(ring.last_ms, now_ms)
  ring.charged = true
end

-- Writes what changed, with an expiry once every counted request has left.
local function store(key, ring)
  if ring.rewrite then
    redis.call('DEL', key)
  elseif #ring.stale > 0 then
    local fields = {}
    for i, bucket in ipairs(ring.stale) do
      fields[i] = field(bucket)
    end
    redis.call('HDEL', key, unpack(fields))
  end
  if ring.total == 0 then
    -- Nothing counted: no state to keep.
    redis.call('DEL', key)
    return
  end
  if ring.rewrite then
    for bucket, count in pairs(ring.counts) do
      redis.call('HSET', key, field(bucket), count)
    end
  elseif ring.charged then
    redis.call('HINCRBY', key, field(ring.head), 1)
  end
  redis.call('HSET', key, 'w', ring.window_ms, 'h', field(ring.head), 'l', field(ring.last_ms))
  local expire_ms = ring.last_ms + ring.window_ms + ring.bucket_ms - now_ms
  redis.call('PEXPIRE', key, math.max(math.floor(expire_ms), 1))
end

local rings, maxes = {}, {}
local refusing, longest_ms = 0, 0
for i = 1, #KEYS do
  maxes[i] = tonumber(ARGV[2 * i])
  rings[i] = load(KEYS[i], tonumber(ARGV[2 * i + 1]))
  local wait = wait_ms(rings[i], maxes[i])
  -- Strictly longer: on a tie the first refusing limit is reported.
  if wait > longest_ms then
    refusing, longest_ms = i, wait
  end
end

local out = {refusing, longest_ms}
for i = 1, #KEYS do
  local ring = rings[i]
  if refusing == 0 then
    charge(ring)
  end
  -- A refusal changes nothing, except a folded window, which must persist as it does in memory.
  if refusing == 0 or ring.rewrite then
    store(KEYS[i], ring)
  end
  out[#out + 1] = remaining(ring, maxes[i])
  out[#out + 1] = wait_ms(ring, maxes[i])
end
return out
