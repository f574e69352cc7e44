'use strict'
// Loads the native addon that `npm run build` (scripts/build.mjs) puts beside this file.
// TOLLGATE_NATIVE_PATH points at another build of it (for example a debug one).
const { join } = require('node:path')

module.exports = require(process.env.TOLLGATE_NATIVE_PATH || join(__dirname, 'tollgate.node'))
