import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // End-to-end tests build namespaces and start processes: give them room,
    // and never run two of them at once (they share names such as netns "guest").
    testTimeout: 60_000,
    hookTimeout: 120_000,
    fileParallelism: true,
    pool: 'forks',
    // The JSON report is how .ci/run counts passes and failures.
    reporters: ['default', ['json', { outputFile: 'dist/test-results.json' }]],
  },
});
