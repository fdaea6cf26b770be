// Following the log: `/v1/events` is a server-sent event stream, but the browser's
// EventSource cannot send the Authorization header, so the stream is read with fetch and a
// ReadableStream and parsed here. After a disconnect it resumes from the last log index
// seen plus one (`?from=`), so no event is missed or seen twice. Each event is turned into
// the topics it touches ("volumes", "volume:db", "nodes", ...); the page refreshes what
// it shows of those, debounced by the app.

import { authHeaders } from './api.js';

/** The newest events (not heartbeats), oldest first, for the dashboard and volume pages. */
export const recent = [];
const KEEP = 400;

const listeners = new Set();
const statusListeners = new Set();
let controller = null;
let lastIndex = null;
let running = false;
/** Which start() a follow loop belongs to: a loop of an earlier session ends. */
let generation = 0;
/** The stream said it cannot serve from where we asked (events trimmed): start from now. */
let restartFromNow = false;
/** Nodes known to be down: their next heartbeat means they are up again. */
const downNodes = new Set();

/** `fn(event, topics)` for every event from now on; returns the unsubscribe. */
export function onEvent(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** `fn(state)` with 'connecting', 'live' or 'reconnecting'. */
export function onStatus(fn) {
  statusListeners.add(fn);
  return () => statusListeners.delete(fn);
}

function setStatus(state) {
  for (const fn of statusListeners) fn(state);
}

/** Which nodes are down now, from a node listing (so a heartbeat after it counts). */
export function noteNodes(nodes) {
  downNodes.clear();
  for (const node of nodes) if (!node.ready) downNodes.add(node.id);
}

/** The volume a replica id (`{volume}-r{seq}`) belongs to. */
export function volumeOfReplica(id) {
  return String(id).replace(/-r\d+$/, '');
}

/** The volume an event is about, if any. */
export function volumeOf(event) {
  if (event.volume && typeof event.volume === 'object') return event.volume.name;
  if (typeof event.volume === 'string') return event.volume;
  if (event.replica) return event.replica.volume;
  if (event.snapshot) return event.snapshot.volume;
  if (event.backup) return event.backup.volume;
  if (event.type.startsWith('replica') && event.id) return volumeOfReplica(event.id);
  if (event.type.startsWith('recurringJob')) return null;
  if (/^(volume|engine|device|restore|standby)/.test(event.type)) return event.name;
  return null;
}

/** The topics an event touches. */
export function topicsOf(event) {
  const topics = new Set();
  const type = event.type;
  const volume = volumeOf(event);
  if (volume) {
    topics.add('volumes');
    topics.add(`volume:${volume}`);
  }
  if (type.startsWith('replica') || type === 'schedulingFailed') topics.add('replicas');
  if (type.startsWith('node') || type.startsWith('disk')) {
    if (type === 'nodeHeartbeat') {
      if (downNodes.has(event.id)) {
        downNodes.delete(event.id);
        topics.add('nodes');
      }
    } else {
      topics.add('nodes');
    }
    if (type === 'nodeDown') downNodes.add(event.id);
  }
  // Placements move disk usage.
  if (type === 'replicaScheduled' || type === 'replicaRemoved') topics.add('nodes');
  if (type === 'settingChanged') topics.add('settings');
  if (type.startsWith('backup')) topics.add('backups');
  if (type === 'backupVolumesSynced' || type.startsWith('standby') || type.startsWith('volumeActivat')) {
    topics.add('backupvolumes');
  }
  if (type.startsWith('recurringJob')) topics.add('jobs');
  if (type.startsWith('snapshot') || type.startsWith('revert')) topics.add('snapshots');
  return topics;
}

/** Starts following from log index `from` (idempotent). */
export function start(from) {
  if (running) return;
  running = true;
  lastIndex = from > 0 ? from - 1 : null;
  generation += 1;
  follow(generation);
}

/** Stops following (at sign-out). */
export function stop() {
  running = false;
  if (controller) controller.abort();
  controller = null;
  recent.length = 0;
}

async function follow(mine) {
  let delay = 500;
  let wasLive = false;
  const on = () => running && mine === generation;
  while (on()) {
    setStatus(wasLive ? 'reconnecting' : 'connecting');
    controller = new AbortController();
    if (restartFromNow) {
      restartFromNow = false;
      try {
        const status = await fetch('/v1/cluster', { headers: authHeaders(), cache: 'no-store' });
        if (status.ok) lastIndex = (await status.json()).applied ?? lastIndex;
      } catch {
        // Tried again after the pause below.
      }
    }
    const from = lastIndex === null ? 0 : lastIndex + 1;
    try {
      const response = await fetch(`/v1/events?from=${from}`, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: controller.signal,
        cache: 'no-store',
      });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      setStatus('live');
      wasLive = true;
      delay = 500;
      await read(response.body);
    } catch {
      // Ended below, or tried again.
    }
    if (!on()) return;
    // The manager went away or closed the stream: resume after a pause.
    setStatus('reconnecting');
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

/** Reads one stream to its end, dispatching each complete event. */
async function read(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let message = { id: null, event: 'message', data: [] };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
      if (line === '') {
        if (message.data.length) dispatch(message);
        message = { id: null, event: 'message', data: [] };
        continue;
      }
      if (line.startsWith(':')) continue; // keep-alive comment
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? '' : line.slice(colon + 1);
      if (text.startsWith(' ')) text = text.slice(1);
      if (field === 'id') message.id = text;
      else if (field === 'event') message.event = text;
      else if (field === 'data') message.data.push(text);
    }
  }
}

function dispatch(message) {
  const index = Number(message.id);
  if (Number.isFinite(index) && message.id !== null) {
    // One log entry's events share its index; an older index was seen before a reconnect.
    if (lastIndex !== null && index < lastIndex) return;
    lastIndex = index;
  }
  if (message.event === 'error') {
    // The stream ends after it; the next connection starts from the newest entry.
    restartFromNow = true;
    return;
  }
  if (message.event !== 'event') return;
  let event;
  try {
    event = JSON.parse(message.data.join('\n'));
  } catch {
    return;
  }
  event.index = index;
  const topics = topicsOf(event);
  if (event.type !== 'nodeHeartbeat') {
    recent.push(event);
    if (recent.length > KEEP) recent.splice(0, recent.length - KEEP);
  }
  for (const fn of listeners) fn(event, topics);
}

/** A line of words for an event: what happened, to what, and why. */
export function describe(event) {
  const e = event;
  const volume = volumeOf(e);
  const words = {
    nodeRegistered: () => `node ${e.node?.id} registered`,
    nodeUpdated: () => `node ${e.id} updated (tags: ${(e.tags || []).join(', ') || 'none'})`,
    nodeDown: () => `node ${e.id} is down`,
    nodeRemoved: () => `node ${e.id} removed`,
    nodeSchedulingChanged: () => `node ${e.id}: scheduling ${e.schedulable ? 'on' : 'off'}`,
    diskAdded: () => `disk ${e.node}/${e.disk?.id} added`,
    diskUpdated: () => `disk ${e.node}/${e.disk} updated`,
    diskSchedulingChanged: () => `disk ${e.node}/${e.disk}: scheduling ${e.schedulable ? 'on' : 'off'}`,
    volumeCreated: () => `volume ${volume} created`,
    volumeUpdated: () => `volume ${volume}: ${e.numberOfReplicas} replicas, data locality ${e.dataLocality}`,
    volumeExpanded: () => `volume ${volume} expanded`,
    volumeAttaching: () => `volume ${volume} attaching on ${e.node}${e.internal ? ' (internal)' : ''}`,
    volumeAttached: () => `volume ${volume} attached${e.endpoint ? ` at ${e.endpoint}` : ' (no frontend)'}`,
    engineRestarting: () => `engine of ${volume} restarting (epoch ${e.epoch})`,
    deviceFailed: () => `block device of ${volume} failed`,
    volumeDetaching: () => `volume ${volume} detaching`,
    volumeDetached: () => `volume ${volume} detached`,
    volumeDeleting: () => `volume ${volume} deleting`,
    volumeDeleted: () => `volume ${volume} deleted`,
    volumeLabelsSet: () => `volume ${volume} labels set`,
    schedulingFailed: () => `volume ${volume}: ${e.scheduled} of ${e.wanted} replicas placed`,
    replicaScheduled: () => `replica ${e.replica?.id} placed on ${e.replica?.node}/${e.replica?.disk}`,
    replicaStarted: () => `replica ${e.id} started at ${e.address}`,
    replicaFailed: () => `replica ${e.id} failed`,
    replicaRebuilding: () => `replica ${e.id} rebuilding`,
    replicaHealthy: () => `replica ${e.id} healthy`,
    replicaRemoved: () => `replica ${e.id} removed`,
    replicaSalvaged: () => `replica ${e.id} salvaged`,
    settingChanged: () => `setting ${e.key} = ${e.value}`,
    snapshotCreated: () => `snapshot ${e.snapshot?.volume}/${e.snapshot?.name} asked for`,
    snapshotTaken: () => `snapshot ${e.volume}/${e.name} taken`,
    snapshotFailed: () => `snapshot ${e.volume}/${e.name} failed`,
    snapshotDeleting: () => `snapshot ${e.volume}/${e.name} deleting`,
    snapshotDeleted: () => `snapshot ${e.volume}/${e.name} deleted`,
    revertRequested: () => `revert of ${e.volume} to ${e.name} asked for`,
    snapshotReverted: () => `volume ${e.volume} reverted to ${e.name}`,
    revertFailed: () => `revert of ${e.volume} to ${e.name} failed`,
    backupCreated: () => `backup ${e.backup?.name} of ${e.backup?.volume} asked for`,
    backupStarted: () => `backup ${e.name} of ${e.volume} started`,
    backupProgressed: () => `backup ${e.name} of ${e.volume}: ${e.progress}%`,
    backupCompleted: () => `backup ${e.name} of ${e.volume} completed`,
    backupFailed: () => `backup ${e.name} of ${e.volume} failed`,
    backupDeleted: () => `backup ${e.name} of ${e.volume} deleted`,
    backupVolumesSynced: () => `backup volumes on the target synced (${Object.keys(e.volumes || {}).length})`,
    restoreProgressed: () => `volume ${volume} restoring: ${e.progress}%`,
    restoreCompleted: () => `volume ${volume} restored`,
    restoreFailed: () => `restore of ${volume} failed`,
    standbyRestoring: () => `standby ${volume} restoring ${e.backup}`,
    standbyRestored: () => `standby ${volume} holds ${e.backup}`,
    standbyFailed: () => `standby ${volume} failed`,
    volumeActivating: () => `volume ${volume} activating`,
    volumeActivated: () => `volume ${volume} activated${e.note ? `: ${e.note}` : ''}`,
    engineUpgradeStarted: () => `engine of ${volume} upgrading to ${e.image}`,
    engineUpgradeChecked: () => `engine image of ${volume} checked: new engine at epoch ${e.epoch}`,
    engineUpgradeEngineRunning: () => `engine of ${volume} runs the new image`,
    engineUpgradeReplica: () => `replica ${e.id} of ${volume} restarting from the new image`,
    engineUpgradeReplicaDone: () => `replica ${e.id} of ${volume} runs the new image`,
    engineUpgradeFinished: () => `engine upgrade of ${volume} done`,
    engineUpgradeFailed: () => `engine upgrade of ${volume} failed`,
    engineUpgradeJobStarted: () => `engine upgrade job to ${e.image} started over ${(e.volumes || []).length} volumes`,
    engineUpgradeJobFailed: () => `engine upgrade job stopped at ${e.name}`,
    engineUpgradeJobFinished: () => 'engine upgrade job finished',
    recurringJobCreated: () => `recurring job ${e.job?.spec?.name} created`,
    recurringJobUpdated: () => `recurring job ${e.spec?.name} updated`,
    recurringJobDeleted: () => `recurring job ${e.name} deleted`,
    recurringJobFired: () => `recurring job ${e.name} fired for ${(e.volumes || []).length} volumes`,
    recurringJobVolumeStarted: () => `recurring job ${e.name} working on ${e.volume}: ${e.item}`,
    recurringJobVolumeFinished: () => `recurring job ${e.name} finished ${e.volume}: ${e.outcome?.result}`,
  };
  const subject = volume || e.id || e.name || '';
  const text = words[e.type] ? words[e.type]() : `${e.type}${subject ? ` ${subject}` : ''}`;
  const why = e.reason || e.outcome?.reason;
  return why ? `${text}: ${why}` : text;
}
