'use strict'

/**
 * The answers of many `checkQuota` calls, handed over as numbers by the addon
 * (src/napi/packed.rs, which gives the layout) and built here into the objects a lone call
 * answers: one object literal each is far cheaper on the JS thread than properties set one by
 * one through napi.
 */
const STRIDE = 11
const MODES = ['enforce', 'shadow', 'off']

/** One entry per call, in order: its `QuotaCheck`, or its `Error`. `counts[i]`: the i-th call's number of sizes. */
function unpackChecks({ values, errors }, counts) {
  const answers = new Array(counts.length)
  let f = counts.length * STRIDE
  for (let i = 0, o = 0; i < counts.length; i++, o += STRIDE) {
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

module.exports = { checkQuotaMany }
