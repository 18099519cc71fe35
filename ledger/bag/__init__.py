"""From finished runs to a submission: run selection, ids and classes matched, the out-of-bag estimate and
greedy weights, the metric, the CSV's shape, score, leaderboard."""
