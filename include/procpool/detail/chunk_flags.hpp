// procpool::detail: how a worker runs a chunk, as the chunk frame's flags say (wire.hpp). Apart
// from the wire, so that the job runners a user's file instantiates (runner.hpp) need not include it.
#pragma once

#include <cstdint>

namespace procpool::detail {

enum ChunkFlags : std::uint32_t {
  /// Some item of it has a time limit: the worker notes when each item starts.
  kChunkTimed = 1,
  /// It holds a task that may be cancelled: the worker publishes each item it starts in an order
  /// that lets the parent know for sure whether a withdrawal came in time (see runner.hpp).
  kChunkExactStop = 2,
  kChunkKnownFlags = kChunkTimed | kChunkExactStop,
};

}  // namespace procpool::detail
