// Parses Swift files with tree-sitter-swift and reports syntax errors (ERROR and
// MISSING nodes): a syntax check for the Swift layer, the glue and the XCTest suite on a
// machine without a Swift compiler. It checks syntax only, not names or types
// (swift_symbols.py checks names and labels). The grammar lags the language in places
// (`nonisolated(unsafe)`, `#if` inside type bodies): the generated TernFFI.swift is not
// checked with it.
//
//   NODE_PATH=<dir with tree-sitter, tree-sitter-swift> node swift_syntax.js FILE...
'use strict';
const fs = require('fs');
const Parser = require('tree-sitter');
const Swift = require('tree-sitter-swift');

const parser = new Parser();
parser.setLanguage(Swift);
let errors = 0;
for (const file of process.argv.slice(2)) {
  const src = fs.readFileSync(file, 'utf8');
  const lines = src.split('\n');
  const tree = parser.parse(src, null, { bufferSize: 1 << 22 });
  const walk = (node) => {
    if (node.type === 'ERROR' || node.isMissing) {
      errors++;
      const what = node.isMissing ? `missing ${node.type}` : 'syntax error';
      console.error(`${file}:${node.startPosition.row + 1}:${node.startPosition.column + 1}: ${what}`);
      console.error(`    ${lines[node.startPosition.row].trim()}`);
      return;
    }
    for (let i = 0; i < node.childCount; i++) walk(node.child(i));
  };
  walk(tree.rootNode);
}
console.log(`swift syntax: ${process.argv.length - 2} files parsed, ${errors} syntax errors`);
process.exit(errors ? 1 : 0);
