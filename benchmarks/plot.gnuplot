# Time per item against N for the trivial map (x*x), log-log, from the CSV that benchmarks/compare
# writes. Usage:
#
#   gnuplot -e "in='build-bench/bench-results.csv'; out='docs/benchmarks_map.png'" benchmarks/plot.gnuplot
#
# Points are medians; error bars span min-max over the repetitions.
if (!exists("in")) in = 'build-bench/bench-results.csv'
if (!exists("out")) out = 'docs/benchmarks_map.png'

set terminal pngcairo size 960,680 enhanced font 'DejaVu Sans,11'
set output out
set datafile separator ','
set datafile missing ''
set key outside below center horizontal maxrows 3 Left reverse spacing 1.2 width 1
set bmargin 9
set logscale xy
set format x '10^{%L}'
set format y '%g'
set xlabel 'N (items mapped, x -> x*x)'
set ylabel 'wall time per item (microseconds, log scale)'
set title 'map x*x over N integers, 2 workers: time per item (lower is better)'
set grid xtics ytics lc rgb '#cccccc'
set mytics 10

# Columns: 1 workload, 2 param, 3 impl, 10 median_per_item_s, 11 min_per_item_s, 12 max_per_item_s.
# One implementation's map rows (skipped measurements have an empty median and are left out).
rows(impl) = sprintf("< awk -F, '$1 == \"map\" && $3 == \"%s\" && $10 != \"\"' '%s'", impl, in)
us(c) = column(c) * 1e6
stats sprintf("< awk -F, '$1 == \"map\"' '%s'", in) using 2 nooutput
set xrange [STATS_min / 2 : STATS_max * 2]

plot \
  rows('procpool') using 2:(us(10)):(us(11)):(us(12)) with yerrorlines lw 2.5 pt 7 ps 1.3 lc rgb '#d62728' title 'procpool Pool::map', \
  rows('py_pool') using 2:(us(10)):(us(11)):(us(12)) with yerrorlines lw 2 pt 5 lc rgb '#1f77b4' title 'Python multiprocessing.Pool.map', \
  rows('py_ppe') using 2:(us(10)):(us(11)):(us(12)) with yerrorlines lw 2 pt 9 lc rgb '#9467bd' title 'Python ProcessPoolExecutor.map (chunksize 1)', \
  rows('threads') using 2:(us(10)):(us(11)):(us(12)) with yerrorlines lw 2 pt 13 lc rgb '#2ca02c' title 'std::thread x2, static partition', \
  rows('sequential') using 2:(us(10)):(us(11)):(us(12)) with yerrorlines lw 2 pt 11 lc rgb '#7f7f7f' title 'sequential C++'
