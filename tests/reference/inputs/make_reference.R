# nlme references for tests/test_input_checks.py (run from this folder: Rscript make_reference.R)
library(nlme)
library(jsonlite)
d <- read.csv("gaps.csv")
out <- list()
for (reml in c(TRUE, FALSE)) {
  f <- gls(y ~ time + arm, data = d, correlation = corAR1(form = ~ visit_no | subject),
           method = if (reml) "REML" else "ML")
  out[[if (reml) "reml" else "ml"]] <- list(
    deviance = -2 * as.numeric(logLik(f)),
    fixef = as.list(coef(f)),
    sigma = f$sigma,
    rho = as.numeric(coef(f$modelStruct$corStruct, unconstrained = FALSE)))
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "reference.json")
