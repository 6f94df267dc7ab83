# Reference fits of nested and crossed random-effects models for jaxlmm's comparison tests.
#
# Run from the repository root (after `python tests/reference/multilevel/make_data.py`):
#
#     Rscript tests/reference/multilevel/make_reference.R
#
# Reads tests/reference/multilevel/data/<name>.csv and writes reference.json beside this
# script: lme4::lmer fits (REML and ML) with lmerTest's Satterthwaite df, pbkrtest's
# Kenward-Roger df (through lmerTest), Type III tests, BLUPs with conditional SDs, profile
# intervals and likelihood-ratio statistics; nlme::lme fits of subjects nested in sites with
# an AR(1) residual.  Every lmer fit is repeated with a second optimiser (Nelder_Mead) and the
# lower deviance is kept (both are recorded).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(pbkrtest)
  library(nlme)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
ref_dir <- if (length(args) >= 1) args[1] else file.path("tests", "reference", "multilevel")
data_dir <- file.path(ref_dir, "data")
out_path <- file.path(ref_dir, "reference.json")

named <- function(v) as.list(setNames(as.numeric(v), names(v)))
arr <- function(v) I(unname(as.numeric(v)))

read_ds <- function(name) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  for (c in intersect(names(d), c("school", "class", "district", "plate", "sample", "subject", "item", "site",
                                   "s", "d", "arm", "visit")))
    d[[c]] <- factor(d[[c]])
  if ("visit" %in% names(d)) d$vi <- as.integer(d$visit)
  d <- d[!is.na(d$y), , drop = FALSE]
  rownames(d) <- NULL
  d
}

capture <- function(expr) {
  warns <- character(0)
  val <- withCallingHandlers(expr, warning = function(w) {
    warns <<- c(warns, conditionMessage(w))
    invokeRestart("muffleWarning")
  }, message = function(m) invokeRestart("muffleMessage"))
  list(value = val, warnings = warns)
}

varcorr <- function(fit) {
  vc <- as.data.frame(VarCorr(fit))
  lapply(seq_len(nrow(vc)), function(i) list(grp = vc$grp[i], var1 = vc$var1[i],
                                             var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i],
                                             vcov = vc$vcov[i], sdcor = vc$sdcor[i]))
}

blups <- function(fit) {
  re <- ranef(fit, condVar = TRUE)
  lapply(names(re), function(g) {
    m <- re[[g]]
    pv <- attr(m, "postVar")
    sds <- t(apply(pv, 3, function(a) sqrt(diag(as.matrix(a)))))
    if (ncol(m) == 1) sds <- matrix(sqrt(pv[1, 1, ]), ncol = 1)
    list(group = g, levels = I(rownames(m)), columns = I(colnames(m)),
         values = lapply(seq_len(nrow(m)), function(i) arr(m[i, ])),
         condsd = lapply(seq_len(nrow(m)), function(i) arr(sds[i, ])))
  })
}

fit_lmer <- function(formula, d, reml) {
  a <- capture(lme4::lmer(formula, d, REML = reml, control = lmerControl(optimizer = "bobyqa",
                          optCtrl = list(maxfun = 1e5))))
  b <- capture(lme4::lmer(formula, d, REML = reml, control = lmerControl(optimizer = "Nelder_Mead",
                          optCtrl = list(maxfun = 1e5))))
  da <- -2 * as.numeric(logLik(a$value)); db <- -2 * as.numeric(logLik(b$value))
  best <- if (db < da) b else a
  list(fit = best$value, warnings = best$warnings, chosen = if (db < da) "Nelder_Mead" else "bobyqa",
       deviance_by_optimizer = list(bobyqa = da, Nelder_Mead = db))
}

coef_table <- function(fit, ddf) {
  s <- summary(lmerTest::as_lmerModLmerTest(fit), ddf = ddf)$coefficients
  col <- function(j) as.list(setNames(as.numeric(s[, j]), rownames(s)))
  list(estimate = col("Estimate"), se = col("Std. Error"), df = col("df"), t = col("t value"))
}

anova3 <- function(fit, ddf) {
  if (length(fixef(fit)) < 2) return(list())
  a <- anova(lmerTest::as_lmerModLmerTest(fit), type = 3, ddf = ddf)
  lapply(rownames(a), function(r) list(term = r, F = a[r, "F value"], num_df = a[r, "NumDF"], den_df = a[r, "DenDF"]))
}

cases <- list()
add <- function(x) cases[[length(cases) + 1]] <<- x

lmer_case <- function(case, dataset, formula, jax_formula, kr = TRUE, extra = list()) {
  d <- read_ds(dataset)
  for (reml in c(TRUE, FALSE)) {
    f <- fit_lmer(as.formula(formula), d, reml)
    fit <- f$fit
    out <- list(case = case, dataset = dataset, engine = "lmer", r_formula = formula, jaxlmm_formula = jax_formula,
                reml = reml, n_obs = nrow(d), deviance = -2 * as.numeric(logLik(fit)),
                fixef = named(fixef(fit)), se = named(sqrt(diag(as.matrix(vcov(fit))))),
                varcorr = varcorr(fit), sigma = sigma(fit), theta = named(getME(fit, "theta")),
                singular = isSingular(fit), ngrps = named(ngrps(fit)), blups = blups(fit),
                optimizer = list(chosen = f$chosen, deviance_by_optimizer = f$deviance_by_optimizer),
                warnings = I(f$warnings))
    if (reml) {
      out$satterthwaite <- coef_table(fit, "Satterthwaite")
      out$anova_satterthwaite <- anova3(fit, "Satterthwaite")
      if (kr) {
        out$kenward_roger <- coef_table(fit, "Kenward-Roger")
        out$anova_kenward_roger <- anova3(fit, "Kenward-Roger")
      }
    }
    if (!reml && !is.null(extra$profile)) {
      ci <- confint(fit, method = "profile", oldNames = FALSE, level = 0.95)
      out$profile <- lapply(rownames(ci), function(r) list(parameter = r, lower = ci[r, 1], upper = ci[r, 2]))
    }
    if (!reml && !is.null(extra$lrt_small)) {
      small <- fit_lmer(as.formula(extra$lrt_small), d, FALSE)$fit
      out$lrt <- list(small_formula = extra$lrt_small, jaxlmm_small = extra$lrt_small_jax,
                      statistic = 2 * (as.numeric(logLik(fit)) - as.numeric(logLik(small))),
                      small_deviance = -2 * as.numeric(logLik(small)))
    }
    add(out)
  }
}

lmer_case("nested2", "nested2", "y ~ x + trt + (1 | school/class)", "y ~ x + trt + (1 | school/class)",
          extra = list(profile = TRUE, lrt_small = "y ~ x + trt + (1 | school)",
                       lrt_small_jax = "y ~ x + trt + (1 | school)"))
lmer_case("nested3", "nested3", "y ~ x + trt + (1 | district/school/class)",
          "y ~ x + trt + (1 | district/school/class)")
lmer_case("nested_slopes", "nested_slopes", "y ~ x + trt + (1 + x | school/class)",
          "y ~ x + trt + (1 + x | school/class)")
lmer_case("nested_singular", "nested_singular", "y ~ x + trt + (1 | school/class)",
          "y ~ x + trt + (1 | school/class)")
lmer_case("crossed", "crossed", "y ~ 1 + (1 | plate) + (1 | sample)", "y ~ 1 + (1 | plate) + (1 | sample)",
          extra = list(profile = TRUE, lrt_small = "y ~ 1 + (1 | plate)", lrt_small_jax = "y ~ 1 + (1 | plate)"))
lmer_case("crossed_slopes", "crossed_slopes", "y ~ cond + (1 + cond | subject) + (1 + cond | item)",
          "y ~ cond + (1 + cond | subject) + (1 + cond | item)")
lmer_case("partial", "partial", "y ~ cond + (1 | subject) + (1 | item) + (1 | subject:item)",
          "y ~ cond + (1 | subject) + (1 | item) + (1 | subject:item)")
lmer_case("crossed_big", "crossed_big", "y ~ cond + (1 | s) + (1 | d)", "y ~ cond + (1 | s) + (1 | d)", kr = FALSE)

# nlme: subjects nested in sites, AR(1) within subject
lme_case <- function(case, dataset, random, jax_formula) {
  d <- read_ds(dataset)
  d <- d[order(d$site, d$subject, d$vi), ]
  for (reml in c(TRUE, FALSE)) {
    r <- capture(nlme::lme(y ~ time + arm, data = d, random = random,
                           correlation = corAR1(form = ~ vi | site/subject),
                           method = if (reml) "REML" else "ML",
                           control = lmeControl(maxIter = 500, msMaxIter = 500, niterEM = 100, tolerance = 1e-10,
                                                msTol = 1e-12)))
    fit <- r$value
    covs <- lapply(pdMatrix(fit$modelStruct$reStruct), function(m) m * sigma(fit)^2)
    re <- ranef(fit)
    add(list(case = case, dataset = dataset, engine = "lme", jaxlmm_formula = jax_formula, reml = reml,
             n_obs = nrow(d), deviance = -2 * as.numeric(logLik(fit)), fixef = named(fixef(fit)),
             se = named(sqrt(diag(vcov(fit)))), sigma = sigma(fit),
             phi = as.numeric(coef(fit$modelStruct$corStruct, unconstrained = FALSE)),
             G = lapply(names(covs), function(g) list(group = g, names = I(colnames(covs[[g]])),
                                                       matrix = lapply(seq_len(nrow(covs[[g]])),
                                                                       function(i) arr(covs[[g]][i, ])))),
             blups = lapply(names(re), function(g) list(group = g, levels = I(rownames(re[[g]])),
                                                        columns = I(colnames(re[[g]])),
                                                        values = lapply(seq_len(nrow(re[[g]])),
                                                                        function(i) arr(re[[g]][i, ])))),
             warnings = I(r$warnings)))
  }
}
lme_case("sites_ar1", "sites_ar1", ~ 1 | site/subject, "y ~ time + arm + (1 | site/subject) + ar1(visit | subject)")
lme_case("sites_ar1_slope", "sites_ar1_slope", list(site = ~ 1, subject = ~ 1 + time),
         "y ~ time + arm + (1 | site) + (1 + time | subject) + ar1(visit | subject)")

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 pbkrtest = as.character(packageVersion("pbkrtest")), nlme = as.character(packageVersion("nlme")),
                 Matrix = as.character(packageVersion("Matrix")), generated = format(Sys.Date()))
writeLines(toJSON(list(`_versions` = versions, cases = cases), auto_unbox = TRUE, digits = NA, pretty = TRUE,
                  null = "null"), out_path)
cat("wrote", out_path, "with", length(cases), "cases\n")
