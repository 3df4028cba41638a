'use strict'

/**
 * The answers of many calls handed over as numbers by the addon (src/napi/packed.rs, which
 * gives the layout) and built here into the objects a lone call answers: one object literal
 * each is far cheaper on the JS thread than properties set one by one through napi.
 */
const MODES = ['enforce', 'shadow', 'off']
/** Numbers per call, the leading 1 (answer) or 0 (error) included. */
const CHECK_STRIDE = 11
const UPLOAD_STRIDE = 13

/** One entry per call, in order: its `QuotaCheck`, or its `Error`. `counts[i]`: the i-th call's number of sizes. */
function unpackChecks({ values, errors }, counts) {
  const answers = new Array(counts.length)
  let f = counts.length * CHECK_STRIDE
  for (let i = 0, o = 0; i < counts.length; i++, o += CHECK_STRIDE) {
    if (values[o] !== 1) {
      answers[i] = errors[i]
      continue
    }
    const fits = new Array(counts[i])
    for (let k = 0; k < fits.length; k++) fits[k] = values[f++] === 1
    answers[i] = {
      allowed: values[o + 1] === 1,
      wouldRefuse: values[o + 2] === 1,
      requestedBytes: values[o + 3],
      missingBytes: values[o + 4],
      fits,
      mode: MODES[values[o + 5]],
      usedBytes: values[o + 6],
      reservedBytes: values[o + 7],
      limitBytes: values[o + 8],
      remainingBytes: values[o + 9],
      percentUsed: values[o + 10],
    }
  }
  return answers
}

/** `checkQuotaMany`'s arguments for calls given as `[userId, sizes]`. */
function packCheckCalls(calls) {
  const users = new Array(calls.length)
  const counts = new Array(calls.length)
  const sizes = []
  for (let i = 0; i < calls.length; i++) {
    users[i] = calls[i][0]
    counts[i] = calls[i][1].length
    for (const size of calls[i][1]) sizes.push(size)
  }
  return { users, sizes, counts }
}

/** `checkQuota` for calls given as `[userId, sizes]`, through `native.checkQuotaMany`: one entry per call, its answer or its `Error`. */
async function checkQuotaMany(native, calls) {
  const { users, sizes, counts } = packCheckCalls(calls)
  return unpackChecks(await native.checkQuotaMany(users, sizes, counts), counts)
}

/**
 * `recordUpload` for calls given as `[userId, projectId, bytes, options]`, through
 * `native.recordUploadMany`: one entry per call, its `RecordedUpload` or its `Error`.
 */
async function recordUploadMany(native, calls) {
  const n = calls.length
  const users = new Array(n)
  const projects = new Array(n)
  const sizes = new Array(n)
  const uploadIds = new Array(n)
  const replaces = new Array(n)
  for (let i = 0; i < n; i++) {
    const [user, project, size, options] = calls[i]
    users[i] = user
    projects[i] = project
    sizes[i] = size
    uploadIds[i] = options?.uploadId ?? null
    replaces[i] = options?.replacesBytes ?? null
  }
  const { values, texts, errors } = await native.recordUploadMany(users, projects, sizes, uploadIds, replaces)
  const answers = new Array(n)
  for (let i = 0, o = 0; i < n; i++, o += UPLOAD_STRIDE) {
    if (values[o] !== 1) {
      answers[i] = errors[i]
      continue
    }
    answers[i] = {
      uploadId: texts?.[i] ?? uploadIds[i],
      bytes: values[o + 1],
      duplicate: values[o + 2] === 1,
      counted: values[o + 3] === 1,
      wouldRefuse: values[o + 4] === 1,
      replacedBytes: values[o + 5],
      netBytes: values[o + 6],
      mode: MODES[values[o + 7]],
      usedBytes: values[o + 8],
      reservedBytes: values[o + 9],
      limitBytes: values[o + 10],
      remainingBytes: values[o + 11],
      percentUsed: values[o + 12],
    }
  }
  return answers
}

module.exports = { checkQuotaMany, recordUploadMany }
